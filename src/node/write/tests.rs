//! Unit tests of the write path's bookkeeping: the root's outcomes per
//! write id, the uplink's resend over a new link, notices and the
//! settled ids a hop remembers. Test-only; no I/O.

use super::commit::{Verdict, ORIGINS, OUTCOMES_PER_ORIGIN};
use super::settled::{Kept, Settled, SETTLED_FOR, SETTLED_MAX};
use super::uplink::{Lane, Laning, Link, Pending, UplinkState};
use super::*;
use crate::store::{NodeId, WriteId};
use crate::wire::{Peer, Write};

fn id(seq: u64) -> WriteId {
    WriteId { origin: 7, incarnation: 99, seq }
}

#[test]
fn the_root_decides_each_write_id_once() {
    let mut o = Outcomes::default();
    assert!(matches!(o.check(&id(1), 1), Verdict::New));
    o.record(&id(1), WriteResult::Committed { version: 10, created: true }, 1);
    match o.check(&id(1), 1) {
        Verdict::Decided(r) => assert_eq!(r, WriteResult::Committed { version: 10, created: true }),
        Verdict::New => panic!("a resend must get the first outcome"),
    }
    assert!(matches!(o.check(&id(2), 1), Verdict::New));
    assert!(matches!(o.check(&WriteId { incarnation: 100, ..id(1) }, 1), Verdict::New), "a new incarnation");
}

#[test]
fn a_write_overtaken_by_a_later_one_from_its_node_is_refused() {
    let mut o = Outcomes::default();
    o.record(&id(5), WriteResult::Committed { version: 3, created: false }, 1);
    match o.check(&id(4), 1) {
        Verdict::Decided(WriteResult::Failed { error }) => assert!(error.contains("per-node write order")),
        _ => panic!("seq 4 after seq 5 must not commit"),
    }
}

#[test]
fn write_order_is_kept_per_slot_not_across_slots() {
    let mut o = Outcomes::default();
    o.record(&id(5), WriteResult::Committed { version: 3, created: false }, 1);
    // Seq 4 of another slot (a router's batch went to two groups, or the
    // slot moved here): not overtaken by seq 5 of slot 1.
    assert!(matches!(o.check(&id(4), 2), Verdict::New));
    o.record(&id(4), WriteResult::Committed { version: 4, created: false }, 2);
    assert!(matches!(o.check(&id(4), 2), Verdict::Decided(WriteResult::Committed { version: 4, .. })));
    // Seq 3 of slot 2 comes after seq 4 of slot 2: refused.
    assert!(matches!(o.check(&id(3), 2), Verdict::Decided(WriteResult::Failed { .. })));
    // An outcome whose slot is not known (an old log) stands for every slot.
    o.record(&id(9), WriteResult::Absent, crate::slots::UNKNOWN_SLOT);
    assert!(matches!(o.check(&id(8), 6), Verdict::Decided(WriteResult::Failed { .. })));
    // Only the slots asked for (and the unknown ones) go with a move.
    let moved: Vec<u64> =
        o.export(Some(&std::collections::BTreeSet::from([2]))).iter().map(|(id, _, _)| id.seq).collect();
    assert_eq!(moved, vec![4, 9]);
    assert!(o.is_decided(&id(4)) && !o.is_decided(&id(3)));
}

#[test]
fn outcomes_survive_an_export_and_restore() {
    let mut o = Outcomes::default();
    o.record(&id(3), WriteResult::Committed { version: 42, created: true }, 1);
    o.record(&id(4), WriteResult::Absent, 1);
    o.record(&id(5), WriteResult::InsyncBelowMin { have: 1, need: 2 }, 1);
    assert_eq!(o.export(None).len(), 2, "a refusal is not exported as a delete of an absent key");
    let mut again = Outcomes::default();
    for (id, version, slot) in o.export(None) {
        let result = match version {
            0 => WriteResult::Absent,
            v => WriteResult::Committed { version: v, created: false },
        };
        again.record(&id, result, slot);
    }
    assert!(matches!(again.check(&id(3), 1), Verdict::Decided(WriteResult::Committed { version: 42, .. })));
    assert!(matches!(again.check(&id(4), 1), Verdict::Decided(WriteResult::Absent)));
    assert!(matches!(again.check(&id(6), 1), Verdict::New));
}

#[test]
fn outcomes_stay_bounded() {
    let mut o = Outcomes::default();
    for seq in 1..=(OUTCOMES_PER_ORIGIN as u64 + 10) {
        o.record(&id(seq), WriteResult::Absent, 1);
    }
    assert_eq!(o.export(None).len(), OUTCOMES_PER_ORIGIN);
    match o.check(&id(1), 1) {
        Verdict::Decided(WriteResult::Failed { error }) => {
            assert!(error.contains("no longer remembers"), "a forgotten outcome is not called a refusal: {error}")
        }
        _ => panic!("an old resend is decided"),
    }
    for origin in 0..(ORIGINS as u64 + 5) {
        o.check(&WriteId { origin, incarnation: 1, seq: 1 }, 1);
        o.record(&WriteId { origin, incarnation: 1, seq: 1 }, WriteResult::Absent, 1);
    }
    assert!(o.origins.len() <= ORIGINS);
}

fn pending(seq: u64) -> Pending {
    let update = Update { key: format!("k{seq}"), version: 0, value: None, expires_at: None };
    Pending::new(Write { update, id: id(seq), ack_root: false, cond: Condition::Always }, None)
}

fn link(parent: NodeId, generation: u64) -> Link {
    Link { parent: Peer { id: parent, url: format!("http://127.0.0.1:{parent}") }, generation }
}

fn queued(s: &UplinkState) -> Vec<u64> {
    s.queued_seqs()
}

/// A write of `key` with id `seq`.
fn write_of(key: &str, seq: u64) -> Pending {
    let update = Update { key: key.to_string(), version: 0, value: None, expires_at: None };
    Pending::new(Write { update, id: id(seq), ack_root: true, cond: Condition::Always }, None)
}

/// Each part's lane and its writes' ids.
fn parts_of(parts: &[(Lane, Vec<Pending>)]) -> Vec<(Lane, Vec<u64>)> {
    parts.iter().map(|(lane, batch)| (*lane, batch.iter().map(|p| p.write.id.seq).collect())).collect()
}

/// At a router: keys tagged `{a}` are group 1's, the rest group 2's.
fn by_tag(key: &str) -> Lane {
    if key.starts_with("{a}") {
        1
    } else {
        2
    }
}

const ROUTER: Laning = Laning { router: true, map_epoch: 1 };

#[test]
fn each_lane_sends_its_own_batch_and_a_lane_that_waits_holds_back_only_its_own() {
    let mut s = UplinkState::default();
    for (seq, key) in [(1, "{a}1"), (2, "{b}1"), (3, "{a}2"), (4, "{b}2")] {
        s.enqueue(write_of(key, seq));
    }
    // Group 2's lane is busy (a batch in flight, or failing over).
    let first = s.take_parts(ROUTER, &by_tag, &|lane| lane == 1, 0);
    assert_eq!(parts_of(&first), vec![(1, vec![1, 3])], "group 1's writes pass group 2's");
    s.enqueue(write_of("{a}3", 5));
    let second = s.take_parts(ROUTER, &by_tag, &|lane| lane == 2, 0);
    assert_eq!(parts_of(&second), vec![(2, vec![2, 4])]);
    assert_eq!(queued(&s), vec![5]);
    // Group 1's batch was not answered: it goes again before the write
    // of its slot queued meanwhile, in one batch.
    let (_, batch) = first.into_iter().next().unwrap();
    s.release(&batch);
    s.give_back(batch);
    assert_eq!(queued(&s), vec![1, 3, 5]);
    let third = s.take_parts(ROUTER, &by_tag, &|_| true, 0);
    assert_eq!(parts_of(&third), vec![(1, vec![1, 3, 5])]);
    assert_eq!(s.queued(), 0);
}

#[test]
fn a_slot_whose_writes_are_in_flight_waits_for_them_in_its_new_lane() {
    let mut s = UplinkState::default();
    s.enqueue(write_of("{a}1", 1));
    let before = s.take_parts(ROUTER, &by_tag, &|_| true, 0);
    assert_eq!(parts_of(&before), vec![(1, vec![1])]);
    // The slot moved to group 2 while its write was in flight to group 1.
    s.enqueue(write_of("{a}2", 2));
    s.enqueue(write_of("{b}1", 3));
    let moved = Laning { router: true, map_epoch: 2 };
    let to_two = |_: &str| 2;
    let during = s.take_parts(moved, &to_two, &|_| true, 0);
    assert_eq!(parts_of(&during), vec![(2, vec![3])], "the slot's next write waits for the one in flight");
    // The old owner answered `wrong_group`: the write goes again, first.
    let (_, batch) = before.into_iter().next().unwrap();
    s.release(&batch);
    s.give_back(batch);
    let (_, batch) = during.into_iter().next().unwrap();
    s.release(&batch);
    s.give_back(batch);
    let after = s.take_parts(moved, &to_two, &|_| true, 0);
    assert_eq!(parts_of(&after), vec![(2, vec![1, 2, 3])], "in the order they were queued, each slot in order");
}

#[test]
fn a_write_sent_before_the_node_routed_holds_its_slot_back_in_its_new_lane() {
    let mut s = UplinkState::default();
    s.enqueue(write_of("{a}1", 1));
    let before = s.take_parts(Laning::default(), &|_| 0, &|_| true, 0);
    assert_eq!(parts_of(&before), vec![(0, vec![1])]);
    // The first cutover: the node routes now, and {a} is group 1's.
    s.enqueue(write_of("{a}2", 2));
    let during = s.take_parts(ROUTER, &by_tag, &|_| true, 0);
    assert!(during.is_empty(), "{{a}}2 went up before {{a}}1 was answered: {:?}", parts_of(&during));
    let (_, batch) = before.into_iter().next().unwrap();
    s.release(&batch);
    s.give_back(batch);
    let after = s.take_parts(ROUTER, &by_tag, &|_| true, 0);
    assert_eq!(parts_of(&after), vec![(1, vec![1, 2])]);
}

#[test]
fn a_node_that_does_not_route_has_one_lane() {
    let mut s = UplinkState::default();
    for (seq, key) in [(1, "{a}1"), (2, "{b}1")] {
        s.enqueue(write_of(key, seq));
    }
    let parts = s.take_parts(Laning::default(), &|_| 0, &|_| true, 0);
    assert_eq!(parts_of(&parts), vec![(0, vec![1, 2])]);
}

#[test]
fn writes_a_parent_took_go_again_first_and_in_order_over_a_new_link() {
    let mut s = UplinkState::default();
    assert_eq!(s.relink(&link(1, 1)), 0, "the first link has nothing to send again");
    for seq in [1, 2, 3] {
        s.enqueue(pending(seq));
    }
    let taken = s.take_parts(Laning::default(), &|_| 0, &|_| true, 0);
    for (_, batch) in taken {
        s.release(&batch);
        batch.into_iter().for_each(|p| s.hand(p));
    }
    s.enqueue(pending(4));
    assert!(s.unhand(&id(2)).is_some(), "an outcome heard: no longer ours");
    s.seen = 17;
    assert_eq!(s.relink(&link(1, 1)), 0, "the same link: nothing goes again");
    assert_eq!(queued(&s), vec![4]);
    assert_eq!(s.relink(&link(1, 2)), 2, "a reset is a new link, though the parent is the same");
    assert_eq!(queued(&s), vec![1, 3, 4], "unconfirmed writes go again, in the order they were queued");
    assert!(s.handed.is_empty() && s.handed_ids.is_empty());
    assert_eq!(s.seen, 0, "notices are counted per link");
    let taken = s.take_parts(Laning::default(), &|_| 0, &|_| true, 0);
    assert_eq!(parts_of(&taken), vec![(0, vec![1, 3, 4])], "before any later write");
    for (_, batch) in taken {
        s.release(&batch);
        batch.into_iter().for_each(|p| s.hand(p));
    }
    assert_eq!(s.relink(&link(2, 2)), 3, "a new parent");
    assert_eq!(queued(&s), vec![1, 3, 4]);
}

/// A relink while a later write of the same slot is still in flight: what
/// the old parent took goes again first, and the later write, given back
/// when it comes back unanswered, goes after it (not before: the root
/// would commit the later one and refuse the earlier as overtaken).
#[test]
fn a_write_in_flight_across_a_relink_goes_again_after_what_the_old_parent_took() {
    let mut s = UplinkState::default();
    s.relink(&link(1, 1));
    s.enqueue(write_of("{s}0", 1));
    let taken = s.take_parts(Laning::default(), &|_| 0, &|_| true, 0);
    for (_, batch) in taken {
        s.release(&batch);
        batch.into_iter().for_each(|p| s.hand(p));
    }
    s.enqueue(write_of("{s}1", 2));
    let in_flight = s.take_parts(Laning::default(), &|_| 0, &|_| true, 0);
    assert_eq!(parts_of(&in_flight), vec![(0, vec![2])]);
    assert_eq!(s.relink(&link(2, 2)), 1, "a new parent: write 1 goes again");
    s.enqueue(write_of("{s}2", 3));
    assert!(s.take_parts(Laning::default(), &|_| 0, &|_| true, 0).is_empty(), "the slot waits for write 2");
    for (_, batch) in in_flight {
        s.release(&batch);
        s.give_back(batch);
    }
    let taken = s.take_parts(Laning::default(), &|_| 0, &|_| true, 0);
    assert_eq!(parts_of(&taken), vec![(0, vec![1, 2, 3])], "in the order they were queued");
}

#[test]
fn notices_are_kept_until_the_child_has_them_and_numbered_above_an_earlier_process() {
    let mut s = UplinkState::default();
    let committed = WriteResult::Committed { version: 9, created: true };
    s.owe(3, id(1), "a", &committed);
    s.owe(3, id(2), "b", &committed);
    s.owe(4, id(3), "c", &WriteResult::Absent);
    let first = s.notices[&3][0].seq;
    assert!(first > 1_000_000_000, "numbered from the clock, not from 1: {first}");
    s.acked(3, first - 1);
    assert_eq!(s.notices[&3].len(), 2, "nothing the child has not seen is dropped");
    s.acked(3, first);
    assert_eq!(s.notices[&3].iter().map(|o| o.id.seq).collect::<Vec<_>>(), vec![2]);
    s.acked(3, u64::MAX);
    assert!(!s.notices.contains_key(&3), "all seen: forgotten");
    assert_eq!(s.notices[&4].len(), 1, "another child's notices stay");
}

const FOR_MS: u64 = SETTLED_FOR.as_millis() as u64;

#[test]
fn a_hop_remembers_a_settled_id_for_its_horizon_and_then_forgets_it() {
    let mut s = Settled::default();
    let committed = WriteResult::Committed { version: 8, created: true };
    s.remember(id(1), &committed, 1_000);
    s.remember(id(2), &WriteResult::Absent, 1_000 + FOR_MS / 2);
    s.expire(1_000 + FOR_MS);
    assert_eq!(s.get(&id(1)), Some(committed), "a resend within the horizon is answered");
    s.expire(1_000 + FOR_MS + 1);
    assert_eq!(s.get(&id(1)), None, "past the horizon: forgotten");
    assert_eq!(s.get(&id(2)), Some(WriteResult::Absent), "a younger one stays");
    s.remember(id(3), &WriteResult::Absent, 1_000 + 2 * FOR_MS);
    assert_eq!((s.get(&id(2)), s.len()), (None, 1), "settling one forgets the old ones");
}

#[test]
fn a_hop_remembers_at_most_its_count_of_settled_ids() {
    let mut s = Settled::default();
    let n = 4 * SETTLED_MAX as u64;
    let outcome = |seq: u64| WriteResult::Committed { version: seq, created: seq.is_multiple_of(2) };
    for seq in 0..n {
        s.remember(id(seq), &outcome(seq), 5);
    }
    assert_eq!(s.len(), SETTLED_MAX, "all young, yet bounded");
    assert_eq!(s.get(&id(n - SETTLED_MAX as u64 - 1)), None, "the oldest go first");
    for seq in n - SETTLED_MAX as u64..n {
        assert_eq!(s.get(&id(seq)), Some(outcome(seq)), "each kept id answers with its own outcome");
    }
    let full = s.bytes();
    assert!(full < 4 << 20, "a full table, its ids coming and going, stays under 4 MiB: {full}");
    s.expire(5 + FOR_MS + 1);
    assert_eq!(s.len(), 0);
    assert!(s.bytes() < full / 16, "an emptied table gives its memory back: {} of {full}", s.bytes());
}

#[test]
fn settled_ids_are_found_across_the_wrap_of_their_record_numbers() {
    let mut s = Settled::numbered_from(u32::MAX - 10);
    let outcome = |seq: u64| WriteResult::Committed { version: seq, created: false };
    for seq in 0..100 {
        s.remember(id(seq), &outcome(seq), 1_000 + seq);
    }
    for seq in 0..100 {
        assert_eq!(s.get(&id(seq)), Some(outcome(seq)));
    }
    s.expire(1_000 + 50 + FOR_MS);
    assert_eq!(s.len(), 50, "the 50 oldest went, across the wrap");
    assert_eq!((s.get(&id(49)), s.get(&id(50))), (None, Some(outcome(50))));
    s.remember(id(50), &WriteResult::Absent, 1_000 + 60 + FOR_MS);
    assert_eq!(s.get(&id(50)), Some(WriteResult::Absent), "settled again, in its place");
}

#[test]
fn kept_outcomes_are_small_and_answer_as_they_were_settled() {
    assert!(std::mem::size_of::<Kept>() <= 16, "{}", std::mem::size_of::<Kept>());
    let failed = WriteResult::Failed { error: "nothing was written".into() };
    let all = [
        WriteResult::Committed { version: 3, created: false },
        WriteResult::Absent,
        failed.clone(),
        WriteResult::ConditionFailed { current: Some(4) },
        WriteResult::RootFull { bytes: 10, max: 9 },
        WriteResult::InsyncBelowMin { have: 1, need: 2 },
        WriteResult::InsyncBelowMinAfter { version: 5, have: 1, need: 2 },
    ];
    for r in &all {
        assert_eq!(&Kept::new(r, 7).result(), r);
        assert_eq!(Kept::new(r, 7).slot(), 7);
    }
    let mut s = Settled::default();
    let empty = s.bytes();
    s.remember(id(1), &failed, 1);
    let with = s.bytes();
    s.remember(id(1), &WriteResult::Absent, 2);
    assert_eq!(s.get(&id(1)), Some(WriteResult::Absent), "settled again: the last outcome");
    assert!(s.bytes() < with && with > empty, "a boxed outcome is counted while kept");
    s.remember(id(2), &WriteResult::Absent, 2 + FOR_MS);
    assert_eq!(s.get(&id(1)), Some(WriteResult::Absent), "settled again: kept from the second time");
    s.remember(id(3), &WriteResult::Absent, 3 + FOR_MS);
    assert_eq!(s.get(&id(1)), None);
}

#[test]
fn the_roots_outcomes_are_counted_in_bytes() {
    let mut o = Outcomes::default();
    assert_eq!(o.bytes(), 0);
    for seq in 1..=(OUTCOMES_PER_ORIGIN as u64 + 10) {
        o.record(&id(seq), WriteResult::Committed { version: seq, created: false }, 1);
    }
    let full = o.bytes();
    assert!((OUTCOMES_PER_ORIGIN * 24..OUTCOMES_PER_ORIGIN * 40).contains(&full), "{full}");
    o.record(&id(OUTCOMES_PER_ORIGIN as u64 + 11), WriteResult::Failed { error: "x".repeat(100) }, 1);
    assert!(o.bytes() >= full + 100, "a boxed outcome is counted");
}

#[test]
fn outcomes_restored_out_of_order_are_found() {
    let mut o = Outcomes::default();
    for seq in [10, 5, 7, 10] {
        o.record(&id(seq), WriteResult::Committed { version: seq * 2, created: false }, 1);
    }
    assert_eq!(o.len(), 3, "a seq recorded again replaces its outcome");
    for seq in [5, 7, 10] {
        assert!(
            matches!(o.check(&id(seq), 1), Verdict::Decided(WriteResult::Committed { version, .. }) if version == seq * 2)
        );
    }
    assert!(matches!(o.check(&id(6), 1), Verdict::Decided(WriteResult::Failed { .. })), "never committed out of order");
}
