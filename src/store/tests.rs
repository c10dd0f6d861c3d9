//! The store's unit tests: versions and tombstones, pushes against fills,
//! expectations, resets and confirmation, holder records, expiry, byte
//! accounting, and the S3-FIFO eviction order. Test-only; no I/O.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::num::NonZeroU64;

use bytes::Bytes;

use super::entry::{expiry, ENTRY_OVERHEAD};
use super::queues::{FingerprintHasher, Queue, GHOST_SLOT, QUEUE_SLOT};
use super::*;

fn t(ms: Millis) -> Time {
    Time::at(ms)
}

fn put(key: &str, version: Version, value: &str) -> Update {
    Update { key: key.into(), version, value: Some(Bytes::from(value.to_string())), expires_at: None }
}

fn del(key: &str, version: Version) -> Update {
    Update { key: key.into(), version, value: None, expires_at: None }
}

/// A client's write before the root gives it a version.
fn change(key: &str, value: Option<Bytes>, expires_at: Option<Millis>) -> Update {
    Update { key: key.into(), version: 0, value, expires_at }
}

#[test]
fn keys_are_checked() {
    assert!(check_key("a").is_ok());
    assert!(check_key("a/b c").is_ok());
    assert!(check_key(&"k".repeat(250)).is_ok());
    assert!(check_key(&"k".repeat(251)).is_err());
    assert!(check_key("").is_err());
    assert!(check_key("a\nb").is_err());
    assert!(check_key("a\u{7f}").is_err());
    assert!(check_key("ключ").is_ok());
}

#[test]
fn an_entry_stays_small() {
    // Every slot of a big store pays for these bytes; see `Entry`: one
    // pointer in the map, the fields at the head of the entry's allocation.
    assert_eq!(std::mem::size_of::<Entry>(), 8);
    assert_eq!(std::mem::size_of::<Option<Entry>>(), 8);
    assert!(std::mem::size_of::<super::entry::Fields>() <= 32, "{}", std::mem::size_of::<super::entry::Fields>());
    assert_eq!(std::mem::size_of::<Holders>(), 8);
    let mut h = Holders::default();
    h.push((3, 1));
    h.push((4, 2));
    h.retain(|&(id, _)| id != 3);
    assert_eq!(h.iter().map(|&(id, _)| id).collect::<Vec<_>>(), vec![4]);
    h.retain(|_| false);
    assert!(h.0.is_none(), "an emptied list gives its allocation back");
    assert_eq!(expiry(Some(0)).map(NonZeroU64::get), Some(1));
    assert_eq!(expiry(None), None);
}

fn fields(version: Version) -> super::entry::Fields {
    super::entry::Fields {
        version,
        stamp: Stamp::new(7, 3),
        holders: Holders::default(),
        slot: 9,
        freq: std::sync::atomic::AtomicU8::new(2),
        in_main: true,
    }
}

/// Every shape an entry's one allocation can take: keys of 1 and 250
/// bytes; a tombstone, an empty value, small ones, one at the inline
/// limit and one past it (shared); with and without an expiry. Each
/// reads back whole, and is charged what [`Entry::charge`] says.
#[test]
fn an_entry_reads_back_its_key_value_and_expiry_in_every_shape() {
    let long_key = "k".repeat(MAX_KEY_BYTES);
    let values: Vec<Option<Vec<u8>>> = vec![
        None,
        Some(vec![]),
        Some(b"v".to_vec()),
        Some((0..100u8).collect()),
        Some(vec![0xab; super::entry::INLINE_MAX]),
        Some(vec![0xcd; super::entry::INLINE_MAX + 1]),
    ];
    for key in ["a", "ключ", long_key.as_str()] {
        for value in &values {
            for expires in [None, NonZeroU64::new(1), NonZeroU64::new(u64::MAX)] {
                let e = Entry::new(key, value.as_deref(), expires, fields(5));
                assert_eq!(e.key(), key);
                assert_eq!(e.value().as_deref(), value.as_deref(), "{key:?}");
                assert_eq!(e.value_len(), value.as_ref().map(Vec::len));
                assert_eq!(e.is_tombstone(), value.is_none());
                assert_eq!(e.expires_at(), expires.map(NonZeroU64::get));
                assert_eq!(e.charged(), Entry::charge(key, &value.clone().map(Bytes::from)));
                assert_eq!((e.version, e.stamp, e.slot, e.in_main), (5, Stamp::new(7, 3), 9, true));
            }
        }
    }
}

/// A snapshot reads the store a shard at a time: together the shards give
/// every entry once, tombstones and expired ones included.
#[test]
fn the_shards_entries_together_are_every_entry_once() {
    let s = Store::new();
    for i in 0..500u64 {
        let update = match i % 3 {
            0 => del(&format!("k{i}"), i + 1),
            1 => Update { expires_at: Some(5), ..put(&format!("k{i}"), i + 1, "v") },
            _ => put(&format!("k{i}"), i + 1, "v"),
        };
        s.apply(&update, t(0));
    }
    let mut all: Vec<DumpEntry> = (0..s.shard_count()).flat_map(|i| s.shard_entries(i)).collect();
    all.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(all, s.dump("", None, usize::MAX, 0));
    assert_eq!(all.len(), 500);
    assert_eq!(all.iter().filter(|e| e.value.is_none()).count(), 167);
}

/// A key past the 16-bit length an entry keeps cannot be stored (none
/// reaches the store: clients' keys are checked, peers' bounded by the
/// wire format); the refusal leaves the shard's counts as they were.
#[test]
fn an_entry_too_long_to_make_leaves_the_counts_as_they_were() {
    for store in [Store::new(), Store::bounded()] {
        store.apply(&put("kept", 1, "v"), t(0));
        let before = (store.len(), store.bytes(), store.tombstones());
        let long = Update { key: "k".repeat(70_000), version: 2, value: None, expires_at: None };
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.apply(&long, t(0))));
        assert!(refused.is_err());
        assert_eq!((store.len(), store.bytes(), store.tombstones()), before);
        audit(&store);
    }
}

/// A new value or expiry keeps the key and every field (holders, access
/// count, queue slot), whether it is written in place or the entry moves
/// to a new allocation, between every pair of shapes.
#[test]
fn an_entry_given_a_new_value_keeps_its_key_and_fields_in_every_change_of_shape() {
    let shapes: Vec<(Option<Vec<u8>>, Option<NonZeroU64>)> = vec![
        (None, None),
        (None, NonZeroU64::new(9)),
        (Some(b"abc".to_vec()), None),
        (Some(b"xyz".to_vec()), None),
        (Some(b"abc".to_vec()), NonZeroU64::new(9)),
        (Some(b"abcd".to_vec()), None),
        (Some(vec![1; super::entry::INLINE_MAX + 10]), None),
        (Some(vec![2; super::entry::INLINE_MAX + 10]), NonZeroU64::new(4)),
    ];
    for (from, from_exp) in &shapes {
        for (to, to_exp) in &shapes {
            let mut e = Entry::new("key", from.as_deref(), *from_exp, fields(1));
            e.holders.push((42, 3));
            e.touch();
            e.version = 2;
            e.set_value(to.as_deref(), *to_exp);
            assert_eq!(e.key(), "key");
            assert_eq!(e.value().as_deref(), to.as_deref(), "{from:?} -> {to:?}");
            assert_eq!(e.is_tombstone(), to.is_none());
            assert_eq!(e.expires_at(), to_exp.map(NonZeroU64::get));
            assert_eq!(e.holder_ids(), vec![42]);
            assert_eq!(e.freq.load(std::sync::atomic::Ordering::Relaxed), 3);
            assert_eq!((e.version, e.slot, e.in_main), (2, 9, true));
        }
    }
}

/// A shared (large) value handed out by a read outlives its entry, and
/// the entry gives its reference back when dropped or given a new value.
#[test]
fn an_entry_shares_a_large_value_with_readers_and_releases_it_when_dropped() {
    let big = vec![7u8; super::entry::INLINE_MAX * 2];
    let mut e = Entry::new("big", Some(&big), None, fields(1));
    let read = e.value().expect("a value");
    assert!(!read.is_unique(), "shared with the entry, not copied");
    e.set_value(Some(b"small"), None);
    assert!(read.is_unique(), "the entry's new value let go of the old one");
    let e2 = Entry::new("big", Some(&big), None, fields(1));
    let read2 = e2.value().expect("a value");
    drop(e2);
    assert!(read2.is_unique(), "a dropped entry lets go of its value");
    assert_eq!(&read2[..], &big[..]);
    assert_eq!(e.value().as_deref(), Some(&b"small"[..]));
}

#[test]
fn a_stored_value_does_not_pin_the_buffer_it_was_read_into() {
    let store = Store::new();
    // A 10-byte value sliced out of a 64 KiB read buffer.
    let buffer = Bytes::from(vec![7u8; 64 << 10]);
    let value = buffer.slice(100..110);
    store.apply(&Update { key: "k".into(), version: 1, value: Some(value.clone()), expires_at: None }, t(0));
    let Lookup::Value { value: stored, .. } = store.get("k", t(0)) else { panic!("stored") };
    assert_eq!(stored, value);
    let within = buffer.as_ptr_range().contains(&stored.as_ptr());
    assert!(!within, "the store keeps its own copy, not a slice of the read buffer");
}

#[test]
fn newer_version_replaces_older() {
    let s = Store::new();
    assert_eq!(s.apply(&put("k", 1, "a"), t(0)), Applied::Newer { holders: vec![] });
    assert!(matches!(s.apply(&put("k", 3, "c"), t(0)), Applied::Newer { .. }));
    assert!(matches!(s.get("k", t(0)), Lookup::Value { version: 3, ref value, .. } if value == "c"));
}

#[test]
fn late_push_never_overwrites_newer_version() {
    let s = Store::new();
    s.apply(&put("k", 5, "new"), t(0));
    assert_eq!(s.apply_push(&put("k", 4, "old"), t(0), s.generation()), Applied::Stale);
    assert_eq!(s.apply_push(&put("k", 5, "dup"), t(0), s.generation()), Applied::Stale);
    assert!(matches!(s.get("k", t(0)), Lookup::Value { version: 5, ref value, .. } if value == "new"));
}

#[test]
fn tombstone_beats_a_late_push() {
    let s = Store::new();
    s.apply(&put("k", 1, "a"), t(0));
    assert!(matches!(s.apply_push(&del("k", 2), t(0), s.generation()), Applied::Newer { .. }));
    assert_eq!(s.apply_push(&put("k", 1, "a"), t(0), s.generation()), Applied::Stale);
    assert_eq!(s.get("k", t(0)), Lookup::Tombstone { version: 2, received_at: 0, current: true });
}

#[test]
fn push_for_unheld_key_is_refused() {
    let s = Store::new();
    assert_eq!(s.apply_push(&put("k", 1, "a"), t(0), s.generation()), Applied::NotHeld);
    assert_eq!(s.get("k", t(0)), Lookup::Absent);
}

#[test]
fn push_overtaking_a_fill_is_kept_and_the_fill_dropped() {
    let s = Store::new();
    s.expect("k");
    // The parent recorded us as holder, then a newer write was pushed
    // before the fill's answer (version 1) arrived.
    assert!(matches!(s.apply_push(&put("k", 2, "pushed"), t(10), s.generation()), Applied::Newer { .. }));
    assert_eq!(s.apply(&put("k", 1, "filled"), t(20)), Applied::Stale);
    s.unexpect("k", 0);
    assert!(matches!(s.get("k", t(30)), Lookup::Value { version: 2, ref value, .. } if value == "pushed"));
}

#[test]
fn a_refused_push_does_not_unhold_a_later_fill() {
    let s = Store::new();
    s.apply(&put("k", 1, "a"), t(0));
    let sent = s.tick_now(); // push batch sent
    s.get_and_hold("k", 7, t(0)); // child's new fill recorded after
    s.remove_holder("k", 7, sent); // child's "not held" for the old push
    assert_eq!(s.holders_of("k"), vec![7]);
    s.remove_holder("k", 7, s.tick_now());
    assert!(s.holders_of("k").is_empty());
}

#[test]
fn expectations_are_counted() {
    let s = Store::new();
    s.expect("k");
    s.expect("k");
    s.unexpect("k", 0);
    assert!(matches!(s.apply_push(&put("k", 1, "a"), t(10), s.generation()), Applied::Newer { .. }));
    s.unexpect("k", 0);
    s.remove("k");
    assert_eq!(s.apply_push(&put("k", 2, "b"), t(10), s.generation()), Applied::NotHeld);
}

/// An answer to a request sent in the store's current generation.
fn confirmed(s: &Store) -> Answer {
    Answer { sent_in: s.generation(), confirmed: true }
}

fn unconfirmed(s: &Store) -> Answer {
    Answer { sent_in: s.generation(), confirmed: false }
}

#[test]
fn a_push_checked_before_a_reset_is_stored_but_not_current() {
    let s = Store::new();
    s.apply(&put("k", 1, "a"), t(0));
    let checked = s.generation();
    s.reset(); // the parent's clear, handled between the check and the store
    assert!(matches!(s.apply_push(&put("k", 2, "b"), t(1), checked), Applied::Newer { .. }));
    assert!(matches!(s.get("k", t(1)), Lookup::Value { version: 2, current: false, .. }));
    assert_eq!(s.apply_push(&put("k", 2, "b"), t(2), s.generation()), Applied::Stale);
    assert!(s.get("k", t(2)).is_current(), "a push received after the reset confirms it");
}

#[test]
fn apply_and_hold_records_the_writer_and_reports_newer() {
    let s = Store::new();
    s.apply(&put("k", 5, "newer"), t(0));
    let (applied, current) = s.apply_and_hold(&put("k", 4, "mine"), 3, t(0), confirmed(&s)).expect("same generation");
    assert_eq!(applied, Applied::Stale);
    assert_eq!(current.map(|u| u.version), Some(5));
    assert_eq!(s.holders_of("k"), vec![3]);
    let (applied, current) = s.apply_and_hold(&put("k", 6, "mine"), 8, t(0), confirmed(&s)).expect("same generation");
    assert_eq!(applied, Applied::Newer { holders: vec![3, 8] }, "the writer hears of it too");
    assert_eq!(current.map(|u| u.version), Some(6));
}

#[test]
fn an_answer_from_before_a_reset_is_not_stored() {
    let s = Store::new();
    s.apply(&put("k", 2, "old"), t(0));
    let sent = confirmed(&s);
    s.reset();
    assert_eq!(s.apply_answer(&put("k", 3, "late"), t(1), sent), None);
    assert_eq!(s.apply_and_hold(&put("k", 3, "late"), 4, t(1), sent), None);
    assert!(!s.refresh("k", 2, t(1), sent));
    assert_eq!(s.apply_absent("k", Some(3), t(1), sent.sent_in), None);
    assert!(matches!(s.get("k", t(1)), Lookup::Value { version: 2, current: false, .. }));
    assert!(s.holders_of("k").is_empty());
}

#[test]
fn an_unconfirmed_answer_is_stored_but_never_makes_an_entry_current() {
    let s = Store::new();
    // Kept across a reset: an unconfirmed newer answer is stored, still
    // to be revalidated; an unconfirmed same version changes nothing.
    s.apply(&put("k", 2, "old"), t(0));
    s.reset();
    assert_eq!(s.apply_answer(&put("k", 3, "new"), t(5), unconfirmed(&s)), Some(Applied::Newer { holders: vec![] }));
    assert!(matches!(s.get("k", t(5)), Lookup::Value { version: 3, current: false, received_at: 0, .. }));
    assert_eq!(s.apply_answer(&put("k", 3, "new"), t(6), unconfirmed(&s)), Some(Applied::Stale));
    assert!(!s.get("k", t(6)).is_current());
    assert!(!s.refresh("k", 3, t(6), unconfirmed(&s)), "an unconfirmed 304 confirms nothing");
    // A new key: stored, not current.
    assert!(s.apply_answer(&put("j", 1, "v"), t(7), unconfirmed(&s)).is_some());
    assert!(matches!(s.get("j", t(7)), Lookup::Value { version: 1, current: false, .. }));
    // A writer's commit coming back unconfirmed: stored, the child that
    // sent it is not recorded (nothing would keep it up to date) and
    // waiting children stay waiting.
    s.expect_for("w", 9);
    let (applied, now) = s.apply_and_hold(&put("w", 4, "v"), 8, t(8), unconfirmed(&s)).expect("same generation");
    assert_eq!(applied, Applied::Newer { holders: vec![] });
    assert_eq!(now, None, "not recorded");
    assert!(s.holders_of("w").is_empty());
    assert!(!s.holds_current("w", 8));
    // Confirmed later (a push, or a confirmed answer): current, and the
    // waiting child becomes a holder.
    assert_eq!(s.apply_push(&put("w", 4, "v"), t(9), s.generation()), Applied::Stale);
    assert!(s.get("w", t(9)).is_current());
    assert_eq!(s.holders_of("w"), vec![9]);
    // A current entry stays current under a newer unconfirmed answer:
    // the parent's record of us is per key, not per version.
    assert_eq!(s.apply_answer(&put("w", 6, "v2"), t(10), unconfirmed(&s)), Some(Applied::Newer { holders: vec![9] }));
    assert!(s.get("w", t(10)).is_current());
    assert!(s.holds_current("w", 9));
    assert!(!s.holds_current("k", 9));
}

#[test]
fn a_child_writing_through_becomes_a_holder_when_the_key_arrives() {
    let s = Store::new();
    s.expect_for("k", 4);
    s.expect_for("k", 4);
    assert!(s.holders_of("k").is_empty(), "not held yet");
    // The root's push of the commit reaches us before our answer: the
    // child must get it too.
    assert_eq!(s.apply_push(&put("k", 3, "v"), t(0), s.generation()), Applied::Newer { holders: vec![4] });
    assert_eq!(s.holders_of("k"), vec![4]);
    // Held and current: the child is recorded at once.
    s.expect_for("k", 5);
    assert_eq!(s.holders_of("k"), vec![4, 5]);
    // A reset forgets waiting children along with holders.
    s.remove("k");
    s.expect_for("j", 6);
    s.reset();
    assert!(
        matches!(s.apply_push(&put("j", 1, "v"), t(0), s.generation()), Applied::Newer { ref holders } if holders.is_empty())
    );
}

#[test]
fn an_open_expectation_never_lapses_and_a_closed_one_lingers() {
    let s = Store::new();
    s.expect("k");
    // However long the write takes, the mark holds while it is open.
    assert_eq!(s.sweep_expired(t(u64::MAX / 4)), 0);
    assert!(s.is_expecting("k", t(1 << 40)));
    s.unexpect("k", 100);
    assert!(s.is_expecting("k", t(99)));
    assert_eq!(s.apply_push(&put("k", 1, "a"), t(100), s.generation()), Applied::NotHeld);
    s.sweep_expired(t(100));
    assert!(!s.is_expecting("k", t(0)), "the lapsed mark is swept");
}

#[test]
fn expired_entries_read_as_absent_and_are_swept() {
    let s = Store::new();
    s.apply(&Update { expires_at: Some(1_000), ..put("k", 1, "a") }, t(0));
    assert!(matches!(s.get("k", t(999)), Lookup::Value { .. }));
    assert_eq!(s.get("k", t(1_000)), Lookup::Absent);
    assert_eq!(s.sweep_expired(t(1_000)), 1);
    assert!(s.is_empty());
    assert_eq!(s.bytes(), 0);
}

#[test]
fn holders_are_recorded_only_for_values() {
    let s = Store::new();
    assert_eq!(s.get_and_hold("k", 7, t(0)), Lookup::Absent);
    s.apply(&put("k", 1, "a"), t(0));
    assert!(matches!(s.get_and_hold("k", 7, t(0)), Lookup::Value { .. }));
    assert!(matches!(s.get_and_hold("k", 7, t(0)), Lookup::Value { .. }));
    s.add_holder("k", 9);
    assert_eq!(s.holders_of("k"), vec![7, 9]);
    s.remove_holder("k", 7, s.tick_now());
    assert_eq!(s.holders_of("k"), vec![9]);
    // Holders survive value updates: the next push must reach them.
    assert_eq!(s.apply(&put("k", 2, "b"), t(0)), Applied::Newer { holders: vec![9] });
    s.forget_child(9);
    assert!(s.holders_of("k").is_empty());
    assert!(!s.add_holder("missing", 1));
}

#[test]
fn commit_assigns_versions_and_reports_creation() {
    let s = Store::new();
    let mut next = 0;
    let mut bump = || {
        next += 1;
        next
    };
    assert_eq!(s.commit(&change("k", None, None), Condition::Always, t(0), None, None, &mut bump), Committed::Absent);
    assert_eq!(
        s.commit(&change("k", Some(Bytes::from_static(b"a")), None), Condition::Always, t(0), None, None, &mut bump),
        Committed::Done { version: 1, created: true, holders: vec![] }
    );
    s.add_holder("k", 4);
    assert_eq!(
        s.commit(&change("k", Some(Bytes::from_static(b"b")), None), Condition::Always, t(0), Some(5), None, &mut bump),
        Committed::Done { version: 2, created: false, holders: vec![4, 5] }
    );
    // The writer is pushed its own commit (its reply may be lost) and
    // stays a holder: the next commit pushes to it too.
    assert_eq!(
        s.commit(&change("k", None, None), Condition::Always, t(0), None, None, &mut bump),
        Committed::Done { version: 3, created: false, holders: vec![4, 5] }
    );
    assert_eq!(s.commit(&change("k", None, None), Condition::Always, t(0), None, None, &mut bump), Committed::Absent);
    // Writing an expired key creates it anew.
    s.commit(&change("e", Some(Bytes::from_static(b"x")), Some(10)), Condition::Always, t(0), None, None, &mut bump);
    assert!(matches!(
        s.commit(&change("e", Some(Bytes::from_static(b"y")), None), Condition::Always, t(10), None, None, &mut bump),
        Committed::Done { created: true, .. }
    ));
}

#[test]
fn a_condition_is_decided_against_the_live_value_and_a_refusal_changes_nothing() {
    let s = Store::new();
    let mut next = 0;
    let mut bump = || {
        next += 1;
        next
    };
    let v = |b: &'static [u8]| Some(Bytes::from_static(b));
    let mut commit = |key: &str, value, expires_at, cond, at| {
        s.commit(&change(key, value, expires_at), cond, t(at), None, None, &mut bump)
    };
    assert_eq!(commit("k", v(b"a"), None, Condition::IfPresent, 0), Committed::ConditionFailed { current: None });
    assert_eq!(commit("k", v(b"a"), None, Condition::IfVersion(1), 0), Committed::ConditionFailed { current: None });
    assert!(matches!(
        commit("k", v(b"a"), None, Condition::IfAbsent, 0),
        Committed::Done { version: 1, created: true, .. }
    ));
    assert_eq!(commit("k", v(b"b"), None, Condition::IfAbsent, 0), Committed::ConditionFailed { current: Some(1) });
    assert_eq!(commit("k", v(b"b"), None, Condition::IfVersion(7), 0), Committed::ConditionFailed { current: Some(1) });
    // A refusal used no version: the next commit is 2.
    assert!(matches!(commit("k", v(b"b"), None, Condition::IfVersion(1), 0), Committed::Done { version: 2, .. }));
    assert!(matches!(commit("k", v(b"c"), None, Condition::IfPresent, 0), Committed::Done { version: 3, .. }));
    // A conditional delete; then the tombstone counts as absent.
    assert_eq!(commit("k", None, None, Condition::IfVersion(2), 0), Committed::ConditionFailed { current: Some(3) });
    assert!(matches!(commit("k", None, None, Condition::IfVersion(3), 0), Committed::Done { version: 4, .. }));
    assert_eq!(commit("k", v(b"d"), None, Condition::IfVersion(4), 0), Committed::ConditionFailed { current: None });
    assert!(matches!(
        commit("k", v(b"d"), None, Condition::IfAbsent, 0),
        Committed::Done { version: 5, created: true, .. }
    ));
    // An expired value is absent too.
    assert!(matches!(commit("e", v(b"x"), Some(10), Condition::IfAbsent, 0), Committed::Done { version: 6, .. }));
    assert_eq!(commit("e", v(b"y"), None, Condition::IfAbsent, 5), Committed::ConditionFailed { current: Some(6) });
    assert!(matches!(commit("e", v(b"y"), None, Condition::IfAbsent, 10), Committed::Done { version: 7, .. }));
    assert_eq!(s.get("e", t(10)).version(), Some(7));
}

#[test]
fn refresh_only_matches_the_same_version() {
    let s = Store::new();
    s.apply(&put("k", 3, "a"), t(0));
    assert!(s.refresh("k", 3, t(500), confirmed(&s)));
    assert_eq!(s.get("k", t(600)).received_at(), Some(500));
    assert!(!s.refresh("k", 2, t(700), confirmed(&s)));
    assert!(!s.refresh("nope", 1, t(700), confirmed(&s)));
}

#[test]
fn reset_keeps_values_as_not_current_and_drops_tombstones_and_holders() {
    let s = Store::new();
    s.apply(&put("a", 3, "x"), t(0));
    s.get_and_hold("a", 7, t(0));
    s.apply(&del("d", 2), t(0));
    s.expect("b");
    let g = s.generation();
    s.reset();
    assert_eq!(s.generation(), g + 1);
    assert!(matches!(s.get("a", t(1)), Lookup::Value { version: 3, current: false, .. }));
    assert_eq!(s.get("d", t(1)), Lookup::Absent, "a tombstone is only worth its confirmation");
    assert!(s.holders_of("a").is_empty(), "children re-register when they revalidate");
    // A not-current value is not handed to a child as a holder.
    assert!(matches!(s.get_and_hold("a", 7, t(1)), Lookup::Value { current: false, .. }));
    assert!(s.holders_of("a").is_empty());
    // Writes in flight stay expected across the reset.
    assert!(matches!(s.apply_push(&put("b", 2, "y"), t(1), s.generation()), Applied::Newer { .. }));
}

#[test]
fn a_confirmation_makes_a_kept_entry_current_even_when_the_parent_is_behind() {
    let s = Store::new();
    s.apply(&put("k", 5, "seen"), t(0));
    s.reset();
    // The new parent answers an older version: ours stays (a node never
    // goes back) and is current, since the parent now pushes to us.
    assert_eq!(s.apply(&put("k", 4, "behind"), t(9)), Applied::Stale);
    assert!(matches!(s.get("k", t(9)), Lookup::Value { version: 5, current: true, received_at: 9, .. }));
    s.reset();
    assert!(s.refresh("k", 5, t(12), confirmed(&s)));
    assert!(matches!(s.get("k", t(12)), Lookup::Value { current: true, received_at: 12, .. }));
}

#[test]
fn an_absent_answer_keeps_newer_entries_and_holders() {
    let s = Store::new();
    s.apply(&put("k", 5, "v"), t(0));
    s.get_and_hold("k", 7, t(0));
    assert_eq!(
        s.apply_absent("k", Some(4), t(1), s.generation()),
        Some(Applied::Stale),
        "the parent is behind: keep ours"
    );
    // Deleted later than what we hold: the tombstone replaces the value
    // and the child that holds it is to be told.
    assert_eq!(s.apply_absent("k", Some(6), t(1), s.generation()), Some(Applied::Newer { holders: vec![7] }));
    assert!(matches!(s.get("k", t(1)), Lookup::Tombstone { version: 6, .. }));
    assert_eq!(s.holders_of("k"), vec![7]);
    // Unconfirmed (after a reset) or no version to go by: removed.
    s.apply(&put("j", 2, "v"), t(0));
    s.reset();
    assert_eq!(s.apply_absent("j", Some(3), t(1), s.generation()), Some(Applied::NotHeld));
    assert_eq!(s.get("j", t(1)), Lookup::Absent);
    s.apply(&put("j", 4, "v"), t(0));
    assert_eq!(s.apply_absent("j", None, t(1), s.generation()), Some(Applied::NotHeld));
    assert_eq!(s.apply_absent("missing", Some(9), t(1), s.generation()), Some(Applied::NotHeld));
}

#[test]
fn stamps_keep_time_and_generation_apart() {
    let st = Stamp::new(123_456, 9);
    assert_eq!(st.received_at(), 123_456);
    assert!(st.is_current(9));
    assert!(!st.is_current(10));
    assert!(Stamp::new(1, (1 << 20) + 3).is_current(3), "generations compare in 20 bits");
}

#[test]
fn byte_accounting_follows_values() {
    let s = Store::new();
    s.apply(&put("k", 1, "aaaa"), t(0));
    let one = s.bytes();
    assert_eq!(one, 1 + 4 + ENTRY_OVERHEAD);
    s.apply(&put("k", 2, "aaaaaaaa"), t(0));
    assert_eq!(s.bytes(), one + 4);
    s.remove("k");
    assert_eq!(s.bytes(), 0);
}

fn bounded_with(keys: usize) -> Store {
    let s = Store::bounded();
    for i in 0..keys {
        s.apply(&put(&format!("k{i}"), 1, "v"), t(0));
    }
    s
}

/// Bytes of one entry of `bounded_with`: key, value, overhead, queue slot.
fn one_entry(key: &str) -> usize {
    key.len() + 1 + ENTRY_OVERHEAD + QUEUE_SLOT + key.len()
}

/// A bounded store of one shard: one S3-FIFO order, so a test can name
/// every victim.
fn one_shard(keys: &[&str]) -> Store {
    let s = Store::build(true, 1);
    for k in keys {
        s.apply(&put(k, 1, "v"), t(0));
    }
    s
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn a_wipe_forgets_every_entry_whatever_the_shard_count() {
    let s = one_shard(&["a", "b", "c"]);
    s.wipe();
    assert!(s.is_empty());
    assert_eq!(s.get("a", t(0)).version(), None);
    s.apply(&put("a", 2, "v"), t(0));
    assert_eq!(s.len(), 1, "the store works on after a wipe");
}

fn queue_of(s: &Store, key: &str) -> Option<Queue> {
    s.shard(key).read().map.get(key).map(|e| if e.in_main { Queue::Main } else { Queue::Small })
}

fn ghost_slots(s: &Store) -> usize {
    s.shards.iter().map(|sh| sh.read().queues.as_ref().map_or(0, |q| q.ghost.len())).sum()
}

/// Evicts the next victim of a one-shard store.
fn evict_one(s: &Store) -> Vec<String> {
    s.evict(1, t(0), 1000, 10).removed
}

fn read(s: &Store, key: &str, times: usize) {
    for _ in 0..times {
        assert!(s.get(key, t(0)).version().is_some(), "{key} is held");
    }
}

/// Recounts every shard from scratch and checks the running counts
/// against it: bytes (entries, holder records, queue slots, ghost
/// slots), tombstones, holder records, entries in small, the store's
/// total; and that every entry of a bounded store has its slot in the
/// queue it says it is in (else it could never be evicted).
fn audit(s: &Store) {
    let mut total = 0;
    for shard in s.shards.iter() {
        let sh = shard.read();
        let entries: usize =
            sh.map.iter().map(|e| Entry::charge(e.key(), &e.value()) + e.holders.len() * HOLDER_BYTES).sum();
        let mut queued = 0;
        if let Some(q) = &sh.queues {
            queued = q.small.iter().chain(q.main.iter()).map(|(k, _)| QUEUE_SLOT + k.len()).sum::<usize>()
                + q.ghost.len() * GHOST_SLOT;
            assert_eq!(q.in_small, sh.map.iter().filter(|e| !e.in_main).count(), "entries in small");
            let slots: HashSet<(&str, u32, bool)> = q
                .small
                .iter()
                .map(|(k, n)| (&**k, *n, false))
                .chain(q.main.iter().map(|(k, n)| (&**k, *n, true)))
                .collect();
            for e in sh.map.iter() {
                assert!(slots.contains(&(e.key(), e.slot, e.in_main)), "{} has no slot in its queue", e.key());
            }
            assert!(q.ghost_at.len() <= q.ghost.len());
        }
        assert_eq!(sh.bytes, entries + queued, "the shard's bytes");
        assert_eq!(sh.tombstones, sh.map.iter().filter(|e| e.is_tombstone()).count());
        assert_eq!(sh.holders, sh.map.iter().map(|e| e.holders.len()).sum::<usize>());
        total += sh.bytes;
    }
    assert_eq!(s.bytes(), total, "the store's total is the sum of its shards");
}

#[test]
fn new_keys_enter_small_and_leave_in_order_unless_read_twice() {
    let names = keys("k", 10);
    let s = one_shard(&names.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(names.iter().all(|k| queue_of(&s, k) == Some(Queue::Small)));
    read(&s, "k3", 2);
    read(&s, "k4", 1);
    // Oldest first; each key evicted from small leaves its fingerprint behind.
    let out = s.evict(1, t(0), 1000, 10);
    assert_eq!(out.removed, vec!["k0"]);
    // Freed: the entry and its slot, less the ghost slot it left.
    assert_eq!(out.freed, one_entry("k0") - GHOST_SLOT);
    assert_eq!(evict_one(&s), vec!["k1"]);
    assert_eq!(evict_one(&s), vec!["k2"]);
    assert_eq!(ghost_slots(&s), 3);
    // k3 was read twice: it moves to main instead. k4, read once, goes.
    assert_eq!(evict_one(&s), vec!["k4"]);
    assert_eq!(queue_of(&s, "k3"), Some(Queue::Main));
    assert_eq!(s.len(), 6);
    audit(&s);
}

#[test]
fn a_key_back_from_the_ghost_goes_straight_to_main() {
    let s = one_shard(&["a", "b", "c"]);
    assert_eq!(evict_one(&s), vec!["a"]);
    assert_eq!(ghost_slots(&s), 1);
    s.apply(&put("a", 2, "again"), t(0));
    assert_eq!(queue_of(&s, "a"), Some(Queue::Main), "evicted from small lately and wanted again");
    s.apply(&put("new", 1, "v"), t(0));
    assert_eq!(queue_of(&s, "new"), Some(Queue::Small), "never seen");
    // Its ghost entry is used up: evicted from main (not read since),
    // it leaves no fingerprint, and comes back to small.
    read(&s, "b", 2);
    read(&s, "c", 2);
    read(&s, "new", 2);
    let mut gone = Vec::new();
    while !gone.contains(&"a".to_string()) {
        gone.extend(evict_one(&s));
    }
    s.apply(&put("a", 3, "once more"), t(0));
    assert_eq!(queue_of(&s, "a"), Some(Queue::Small));
    audit(&s);
}

#[test]
fn main_gives_keys_read_since_their_last_pass_another_round() {
    let hot = keys("m", 10);
    let s = one_shard(&hot.iter().map(String::as_str).collect::<Vec<_>>());
    for k in &hot {
        read(&s, k, 2);
    }
    // All ten move to main; then main's head goes.
    assert_eq!(evict_one(&s), vec!["m0"]);
    assert!(hot[1..].iter().all(|k| queue_of(&s, k) == Some(Queue::Main)));
    // m1 was read since: one more round (and one read fewer); m2 goes.
    read(&s, "m1", 1);
    assert_eq!(evict_one(&s), vec!["m2"]);
    // A key with a fill or write in flight is passed over in main too.
    s.expect("m3");
    assert_eq!(evict_one(&s), vec!["m4"]);
    s.unexpect("m3", 0);
    // m1's extra round is used up: it goes in its turn.
    let order: Vec<String> = (0..6).flat_map(|_| evict_one(&s)).collect();
    assert_eq!(order, vec!["m5", "m6", "m7", "m8", "m9", "m1"]);
    assert_eq!(evict_one(&s), vec!["m3"]);
    assert!(s.is_empty());
    audit(&s);
}

#[test]
fn a_scan_passes_through_small_without_pushing_out_keys_read_often() {
    // Room for 24 entries; 20 hot keys read in turn between the steps
    // of a scan of a thousand keys read once each. A hot key comes
    // back every 40 reads, past 39 other keys: LRU would miss it every
    // time. Here, after a first pass, it never misses: the scan's keys
    // leave through small, the hot keys (evicted from small once, then
    // back from the ghost) stay in main.
    let hot = keys("hot", 20);
    let s = Store::build(true, 1);
    let access = |k: &str| {
        let hit = s.get(k, t(0)).version().is_some();
        if !hit {
            s.apply(&put(k, 1, "v"), t(0));
        }
        while s.len() > 24 {
            evict_one(&s);
        }
        hit
    };
    let mut hot_misses = 0;
    for (i, k) in keys("scan", 1000).iter().enumerate() {
        access(k);
        if !access(&hot[i % hot.len()]) && i >= 2 * hot.len() {
            hot_misses += 1;
        }
    }
    assert_eq!(hot_misses, 0);
    assert!(hot.iter().all(|k| queue_of(&s, k) == Some(Queue::Main)));
    audit(&s);
}

#[test]
fn fingerprint_hashes_spread_to_the_top_bits() {
    let hash = |n: u32| BuildHasherDefault::<FingerprintHasher>::default().hash_one(n);
    let tops: HashSet<u64> = (0..1000).map(|n| hash(n) >> 57).collect();
    assert_eq!(tops.len(), 128, "every control-byte value is used");
    let all: HashSet<u64> = (0..1000).map(hash).collect();
    assert_eq!(all.len(), 1000);
}

#[test]
fn the_ghost_is_charged_and_bounded_by_the_entries() {
    let names = keys("k", 100);
    let s = one_shard(&names.iter().map(String::as_str).collect::<Vec<_>>());
    for _ in 0..50 {
        evict_one(&s);
    }
    // Fifty fingerprints for fifty entries: under nine tenths of them.
    assert_eq!(ghost_slots(&s), 45);
    audit(&s);
    let entries: usize = names[50..].iter().map(|k| one_entry(k)).sum();
    assert_eq!(s.bytes(), entries + 45 * GHOST_SLOT);
    // Emptied by eviction, the store gives every byte back, ghost too.
    s.evict(usize::MAX, t(0), 10_000, 10);
    assert!(s.is_empty());
    assert_eq!(ghost_slots(&s), 0);
    assert_eq!(s.bytes(), 0);
}

#[test]
fn accounting_covers_entries_holders_and_the_queues_and_returns_to_zero() {
    let s = Store::bounded();
    s.apply(&put("k", 1, "aaaa"), t(0));
    assert_eq!(s.bytes(), 1 + 4 + ENTRY_OVERHEAD + QUEUE_SLOT + 1);
    s.get_and_hold("k", 7, t(0));
    s.get_and_hold("k", 7, t(0));
    assert_eq!(s.holder_records(), 1);
    assert_eq!(s.bytes(), 1 + 4 + ENTRY_OVERHEAD + QUEUE_SLOT + 1 + HOLDER_BYTES);
    s.apply(&del("k", 2), t(0));
    assert_eq!(s.tombstones(), 1);
    assert_eq!(s.bytes(), 1 + ENTRY_OVERHEAD + QUEUE_SLOT + 1 + HOLDER_BYTES);
    s.forget_child(7);
    assert_eq!(s.holder_records(), 0);
    s.apply(&put("j", 1, "x"), t(0));
    s.get_and_hold("j", 3, t(0));
    s.reset();
    assert_eq!(s.holder_records(), 0);
    assert_eq!(s.tombstones(), 0);
    audit(&s);
    let all = s.evict(usize::MAX, t(0), 1000, 10);
    assert_eq!(all.removed, vec!["j".to_string()]);
    assert_eq!(s.bytes(), 0, "every byte charged was given back");
    audit(&bounded_with(500));
}

#[test]
fn accounting_stays_true_under_random_operations() {
    use rand::{Rng, SeedableRng};
    for shards in [1, 4, SHARDS] {
        let s = Store::build(true, shards);
        let mut rng = rand::rngs::StdRng::seed_from_u64(shards as u64);
        let mut expected: Vec<String> = Vec::new();
        for (step, version) in (1..=20_000u64).enumerate() {
            let k = format!("k{}", rng.gen_range(0..400));
            let now = t(step as u64);
            match rng.gen_range(0..16) {
                0..=3 => {
                    let value = "v".repeat(rng.gen_range(0..64));
                    let expires_at = rng.gen_bool(0.05).then(|| step as u64 + 50);
                    s.apply(&Update { expires_at, ..put(&k, version, &value) }, now);
                }
                4 => {
                    s.apply_push(&del(&k, version), now, s.generation());
                }
                5..=7 => {
                    s.get(&k, now);
                }
                8 => {
                    s.get_and_hold(&k, rng.gen_range(1..4), now);
                }
                9 if expected.len() < 8 => {
                    s.expect(&k);
                    expected.push(k);
                }
                9 | 10 if !expected.is_empty() => {
                    let k = expected.swap_remove(rng.gen_range(0..expected.len()));
                    s.unexpect(&k, 0);
                }
                11 => {
                    s.remove(&k);
                }
                12 | 13 => {
                    let out = s.evict(rng.gen_range(0..4_000), now, 500, 4);
                    let asked = s.tick_now();
                    for (key, holders) in out.held {
                        let cleared: Vec<NodeId> = holders.into_iter().filter(|_| rng.gen_bool(0.7)).collect();
                        s.finish_invalidation(&key, &cleared, asked, now);
                    }
                }
                14 => {
                    s.remove_holder(&k, rng.gen_range(1..4), s.tick_now());
                }
                _ => match rng.gen_range(0..4) {
                    0 => s.reset(),
                    1 => s.forget_child(rng.gen_range(1..4)),
                    2 => {
                        s.collect_tombstones(now, 100);
                    }
                    _ => {
                        s.sweep_expired(now);
                    }
                },
            }
            if step % 50 == 0 {
                audit(&s);
            }
        }
        audit(&s);
        // Nothing in flight, no children: eviction empties the store
        // and gives back every byte.
        for k in expected.drain(..) {
            s.unexpect(&k, 0);
        }
        for child in 1..4 {
            s.forget_child(child);
        }
        s.evict(usize::MAX, t(1 << 30), usize::MAX, usize::MAX);
        assert!(s.is_empty(), "{shards} shards: {} entries left", s.len());
        assert_eq!(s.bytes(), 0, "{shards} shards");
    }
}

#[test]
fn keys_with_a_fill_or_write_in_flight_are_never_evicted() {
    let s = bounded_with(3);
    s.expect("k0");
    s.expect_for("k1", 4);
    s.unexpect("k1", 0);
    let out = s.evict(usize::MAX, t(0), 100, 10);
    assert_eq!(out.removed.len(), 1, "only k2 can go: {out:?}");
    assert!(out.held.iter().any(|(k, h)| k == "k1" && h == &vec![4]));
    assert!(matches!(s.get("k0", t(0)), Lookup::Value { .. }));
    s.unexpect("k0", 0);
    let out = s.evict(usize::MAX, t(0), 100, 10);
    assert_eq!(out.removed, vec!["k0".to_string()]);
}

#[test]
fn a_held_key_goes_after_its_children_dropped_it_unless_one_read_it_again() {
    let s = bounded_with(1);
    s.get_and_hold("k0", 4, t(0));
    s.get_and_hold("k0", 5, t(0));
    let out = s.evict(usize::MAX, t(0), 10, 10);
    assert!(out.removed.is_empty());
    assert_eq!(out.held, vec![("k0".to_string(), vec![4, 5])]);
    let asked = s.tick_now();
    // Child 5 dropped it and then read it again: recorded after we asked.
    s.get_and_hold("k0", 5, t(0));
    assert_eq!(s.finish_invalidation("k0", &[4, 5], asked, t(0)), None);
    assert_eq!(s.holders_of("k0"), vec![5]);
    let asked = s.tick_now();
    // The ring slot is given back when the hand passes it.
    assert_eq!(s.finish_invalidation("k0", &[5], asked, t(0)), Some(one_entry("k0") - QUEUE_SLOT - 2));
    assert_eq!(s.get("k0", t(0)), Lookup::Absent);
    assert_eq!(s.holder_records(), 0);
}

#[test]
fn a_child_drops_what_its_parent_evicts_unless_it_is_in_flight() {
    let s = Store::new();
    s.apply(&put("a", 1, "x"), t(0));
    s.apply(&put("b", 1, "x"), t(0));
    s.apply(&put("c", 1, "x"), t(0));
    s.expect("b");
    s.get_and_hold("c", 9, t(0));
    assert_eq!(s.drop_for_parent("a", t(0)), DropAnswer::Gone);
    assert_eq!(s.get("a", t(0)), Lookup::Absent);
    assert_eq!(s.drop_for_parent("b", t(0)), DropAnswer::Kept);
    assert_eq!(s.drop_for_parent("c", t(0)), DropAnswer::Held(vec![9]));
    assert_eq!(s.drop_for_parent("missing", t(0)), DropAnswer::Gone);
    // Not stored yet, but a fill is on its way: its answer would store it.
    s.expect("coming");
    assert_eq!(s.drop_for_parent("coming", t(0)), DropAnswer::Kept);
}

#[test]
fn tombstones_are_collected_past_the_horizon_when_nothing_needs_them() {
    let s = Store::new();
    s.apply(&del("old", 1), t(0));
    s.apply(&del("young", 2), t(500));
    s.apply(&del("held", 3), t(0));
    s.apply(&del("expected", 4), t(0));
    s.apply(&put("value", 5, "v"), t(0));
    s.add_holder("held", 7);
    s.expect("expected");
    assert!(s.collect_tombstones(t(999), 1_000).is_empty());
    let mut got = s.collect_tombstones(t(1_000), 1_000);
    got.sort();
    assert_eq!(got, vec!["old".to_string()]);
    assert_eq!(s.tombstones(), 3);
    s.remove_holder("held", 7, s.tick_now());
    s.unexpect("expected", 0);
    let mut got = s.collect_tombstones(t(1_500), 1_000);
    got.sort();
    assert_eq!(got, vec!["expected".to_string(), "held".to_string(), "young".to_string()]);
    assert_eq!(s.tombstones(), 0);
    assert!(matches!(s.get("value", t(1_500)), Lookup::Value { .. }), "values are not collected");
    // A late, older push for a collected key is refused: not held.
    assert_eq!(s.apply_push(&put("old", 0, "late"), t(2_000), s.generation()), Applied::NotHeld);
}

#[test]
fn the_parent_tick_is_the_highest_seen_since_the_last_reset() {
    let s = Store::new();
    let g = s.generation();
    s.note_parent_tick(g, 10);
    s.note_parent_tick(g, 7);
    assert_eq!(s.parent_tick(), (g, 10));
    s.reset();
    assert_eq!(s.parent_tick(), (g + 1, 0), "a new parent's ticks start over");
    s.note_parent_tick(g, 99); // an answer from before the reset
    assert_eq!(s.parent_tick(), (g + 1, 0));
    s.note_parent_tick(g + 1, 3);
    assert_eq!(s.parent_tick(), (g + 1, 3));
}

#[test]
fn a_dropped_message_removes_only_records_its_tick_covers() {
    // The parent's side of "dropped": records at or below the child's
    // tick go; a fill recorded after (a refill) survives.
    let parent = Store::new();
    parent.apply(&put("k", 1, "v"), t(0));
    parent.get_and_hold("k", 4, t(0));
    let answered = parent.tick_now(); // the fill answer carries this
    parent.get_and_hold("k", 4, t(0)); // a refill after the eviction
    parent.remove_holder("k", 4, answered + 1);
    assert_eq!(parent.holders_of("k"), vec![4]);
    let later = parent.tick_now();
    parent.remove_holder("k", 4, later + 1);
    assert!(parent.holders_of("k").is_empty());
}

#[test]
fn left_over_slots_are_compacted_when_other_paths_removed_keys() {
    let s = bounded_with(2_000);
    for i in 0..2_000 {
        s.remove(&format!("k{i}"));
    }
    s.apply(&put("live", 1, "v"), t(0));
    s.evict(0, t(0), 0, 0); // nothing asked: no compaction either
    let out = s.evict(usize::MAX, t(0), 10_000, 10);
    assert_eq!(out.removed, vec!["live".to_string()]);
    assert_eq!(s.bytes(), 0);
}

#[test]
fn dump_pages_in_key_order() {
    let s = Store::new();
    for k in ["b", "a", "c", "ab", "x/1"] {
        s.apply(&put(k, 1, "v"), t(0));
    }
    let keys = |v: Vec<DumpEntry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(keys(s.dump("", None, 2, 0)), vec!["a", "ab"]);
    assert_eq!(keys(s.dump("", Some("ab"), 2, 0)), vec!["b", "c"]);
    assert_eq!(keys(s.dump("a", None, 10, 0)), vec!["a", "ab"]);
}

#[test]
fn dump_says_which_entries_a_reset_left_unconfirmed() {
    let s = Store::new();
    s.apply(&put("kept", 1, "v"), t(0));
    s.reset();
    s.apply(&put("new", 2, "w"), t(1));
    let current = |s: &Store| s.dump("", None, 10, 0).into_iter().map(|e| (e.key, e.current)).collect::<Vec<_>>();
    assert_eq!(current(&s), vec![("kept".to_string(), false), ("new".to_string(), true)]);
}

#[test]
fn a_write_that_would_pass_the_bound_is_refused_without_a_version_and_shrinking_ones_pass() {
    let s = Store::new();
    let mut next = 0;
    let mut bump = || {
        next += 1;
        next
    };
    let v = |n: usize| Some(Bytes::from(vec![b'x'; n]));
    let entry = 1 + 100 + ENTRY_OVERHEAD;
    let max = Some(2 * entry);
    let mut commit =
        |key: &str, value| s.commit(&change(key, value, None), Condition::Always, t(0), None, max, &mut bump);
    assert!(matches!(commit("a", v(100)), Committed::Done { version: 1, .. }));
    assert!(matches!(commit("b", v(100)), Committed::Done { version: 2, .. }));
    // A third key would pass the bound: refused, nothing stored, no version used.
    assert_eq!(commit("c", v(1)), Committed::Full { bytes: 2 * entry, max: 2 * entry });
    // An overwrite of the same size, or smaller, passes; a larger one does not.
    assert!(matches!(commit("a", v(100)), Committed::Done { version: 3, .. }));
    assert_eq!(commit("b", v(101)), Committed::Full { bytes: 2 * entry, max: 2 * entry });
    assert!(matches!(commit("b", v(50)), Committed::Done { version: 4, .. }));
    // A delete passes, and makes room.
    assert!(matches!(commit("a", None), Committed::Done { version: 5, .. }));
    assert!(matches!(commit("c", v(1)), Committed::Done { version: 6, .. }));
    assert!(s.bytes() <= 2 * entry);
    assert_eq!(s.get("b", t(0)).version(), Some(4));
}
