//! Recovery, pure: a snapshot's bytes and the log segments' bytes in, the
//! state to rebuild and what to cut out. The caller reads and cuts files.
//!
//! Rules (DESIGN.md, Failure): a torn tail of the last segment is cut; a
//! bad frame anywhere else, or one followed by good frames, is corruption
//! and refuses the start, naming file and offset, unless the operator asked
//! to cut there (`--log-truncate-corrupt`). Segments are fsynced before the
//! writer moves to the next one, so only the last can have a torn tail.

use std::path::{Path, PathBuf};

use super::codec::{scan, Damage, Entry, SlotChange};
use super::{LogError, Position, Record, Recovered};
use crate::store::WriteId;

/// What a valid snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotContent {
    /// The snapshot covers every segment below this one.
    pub next_segment: u64,
    pub max_version: u64,
    pub max_epoch: u64,
    pub records: Vec<Record>,
    pub write_ids: Vec<(WriteId, u64, u16)>,
    /// A standby's stream position when the snapshot was taken.
    pub position: Option<Position>,
    /// Slots frozen for a move when the snapshot was taken.
    pub frozen: Vec<u16>,
}

/// Decodes a snapshot file; any damage makes the whole snapshot bad
/// (it was fsynced before it got its name: damage is not a torn write).
/// The error is the offset and what is wrong there.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotContent, (usize, String)> {
    let scanned = scan(bytes);
    if let Some(damage) = scanned.damage {
        let reason = match &damage {
            Damage::Torn { reason, .. } | Damage::Corrupt { reason, .. } => reason.clone(),
        };
        return Err((damage.offset(), reason));
    }
    let mut entries = scanned.entries.into_iter();
    let Some(Entry::SnapshotHeader { next_segment, max_version, max_epoch }) = entries.next() else {
        return Err((0, "no snapshot header".into()));
    };
    let mut content = SnapshotContent { next_segment, max_version, max_epoch, ..Default::default() };
    for entry in entries {
        match entry {
            Entry::Write(r) => content.records.push(r),
            Entry::WriteOutcome(id, v, slot) => content.write_ids.push((id, v, slot)),
            Entry::Position(p) => content.position = Some(p),
            Entry::Slot(slot, SlotChange::Freeze) => content.frozen.push(slot),
            Entry::SnapshotEnd { records, write_ids } => {
                if records != content.records.len() as u64 || write_ids != content.write_ids.len() as u64 {
                    let got = (content.records.len(), content.write_ids.len());
                    return Err((bytes.len(), format!("end says {records} records, {write_ids} ids; found {got:?}")));
                }
                return Ok(content);
            }
            other => return Err((0, format!("unexpected entry in a snapshot: {other:?}"))),
        }
    }
    Err((bytes.len(), "no end marker: the snapshot is incomplete".into()))
}

/// One segment file as read.
pub struct SegmentBytes<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
}

/// Where to cut: segment `segment` (an index into the input) is truncated
/// at `offset` and every later segment deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub segment: usize,
    pub offset: u64,
    /// A torn tail (cut by default), or corruption cut on the operator's word.
    pub torn: bool,
    pub reason: String,
}

#[derive(Debug)]
pub struct Replayed {
    pub recovered: Recovered,
    pub cut: Option<Cut>,
}

/// The state the snapshot and the segments after it hold.
pub fn replay(
    snapshot: Option<SnapshotContent>,
    segments: &[SegmentBytes<'_>],
    truncate_corrupt: bool,
) -> Result<Replayed, LogError> {
    let mut rec = Recovered::default();
    if let Some(s) = snapshot {
        rec.max_version = s.max_version;
        rec.max_epoch = s.max_epoch;
        for r in &s.records {
            note(&mut rec, r);
        }
        rec.records = s.records;
        rec.write_ids = s.write_ids;
        rec.position = s.position;
        rec.frozen = s.frozen.into_iter().collect();
    }
    let mut cut = None;
    for (i, seg) in segments.iter().enumerate() {
        let scanned = scan(seg.bytes);
        for entry in scanned.entries {
            match entry {
                Entry::Write(r) => {
                    note(&mut rec, &r);
                    if let Some(id) = r.write_id {
                        rec.write_ids.push((id, r.update.version, crate::slots::slot_of(&r.update.key)));
                    }
                    if r.update.version > 0 {
                        rec.records.push(r);
                    }
                }
                // An epoch this root began (it led), or the first frame of
                // a leader's snapshot stream (no position follows until
                // the snapshot is whole): what came before is no position.
                Entry::Epoch(e) => {
                    rec.max_epoch = rec.max_epoch.max(e);
                    rec.position = None;
                }
                Entry::Position(p) => rec.position = Some(p),
                // A standby's log holds its leader's stream, which begins
                // with the leader's snapshot: its write outcomes included.
                Entry::WriteOutcome(id, version, slot) => rec.write_ids.push((id, version, slot)),
                Entry::Slot(slot, SlotChange::Freeze) => {
                    rec.frozen.insert(slot);
                }
                // The slot was handed over: what this group held of it
                // before is gone (a later import of it comes after).
                Entry::Slot(slot, SlotChange::Drop) => {
                    rec.frozen.remove(&slot);
                    rec.records.retain(|r| crate::slots::slot_of(&r.update.key) != slot);
                }
                // The move rolled back: the slot takes writes again.
                Entry::Slot(slot, SlotChange::Thaw) => {
                    rec.frozen.remove(&slot);
                }
                other => return Err(corrupt(seg.path, 0, format!("a snapshot entry in a log segment: {other:?}"))),
            }
        }
        let Some(damage) = scanned.damage else { continue };
        let last = i + 1 == segments.len();
        let offset = damage.offset() as u64;
        match damage {
            Damage::Torn { reason, .. } if last => {
                cut = Some(Cut { segment: i, offset, torn: true, reason });
            }
            Damage::Torn { reason, .. } | Damage::Corrupt { reason, .. } => {
                if !truncate_corrupt {
                    return Err(corrupt(seg.path, offset, reason));
                }
                cut = Some(Cut { segment: i, offset, torn: false, reason });
            }
        }
        break;
    }
    Ok(Replayed { recovered: rec, cut })
}

fn note(rec: &mut Recovered, r: &Record) {
    rec.max_version = rec.max_version.max(r.update.version);
    rec.max_epoch = rec.max_epoch.max(r.epoch);
}

fn corrupt(path: &Path, offset: u64, reason: String) -> LogError {
    LogError::Corrupt { file: PathBuf::from(path), offset, reason }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{encode, frame_len};
    use super::*;
    use crate::store::Update;

    fn rec(key: &str, version: u64) -> Record {
        super::super::test_record(key, version, Some(WriteId { origin: 2, incarnation: 3, seq: version }))
    }

    fn segment(records: impl IntoIterator<Item = Record>) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            encode(&Entry::Write(r), &mut out);
        }
        out
    }

    fn run(segs: &[Vec<u8>], truncate: bool) -> Result<Replayed, LogError> {
        let paths: Vec<PathBuf> = (0..segs.len()).map(|i| PathBuf::from(format!("seg-{i}"))).collect();
        let input: Vec<SegmentBytes<'_>> =
            segs.iter().zip(&paths).map(|(b, p)| SegmentBytes { path: p, bytes: b }).collect();
        replay(None, &input, truncate)
    }

    /// etcd's TestRepairTruncate: 10 records, the file 4 bytes short: 9 come
    /// back, the cut is at the tenth, and after the cut the log goes on.
    #[test]
    fn a_truncated_last_record_is_cut_and_the_log_goes_on() {
        let mut seg = segment((1..=10).map(|v| rec("k", v)));
        let one = seg.len() / 10;
        seg.truncate(seg.len() - 4);
        let r = run(&[seg.clone()], false).unwrap();
        assert_eq!(r.recovered.records.len(), 9);
        assert_eq!(r.recovered.max_version, 9);
        let cut = r.cut.unwrap();
        assert!(cut.torn);
        assert_eq!(cut.offset, 9 * one as u64);
        // Cut there and append ten more, as the log does after a repair.
        seg.truncate(cut.offset as usize);
        seg.extend(segment((10..20).map(|v| rec("k", v))));
        let r = run(&[seg], false).unwrap();
        assert_eq!(r.recovered.records.len(), 19);
        assert!(r.cut.is_none());
    }

    #[test]
    fn corruption_in_the_middle_refuses_naming_file_and_offset() {
        let mut seg = segment((1..=5).map(|v| rec("k", v)));
        let one = seg.len() / 5;
        seg[2 * one + 20] ^= 0x40;
        let err = run(&[seg.clone()], false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("seg-0") && msg.contains(&format!("offset {}", 2 * one)), "{msg}");
        // The operator's flag cuts there instead.
        let r = run(&[seg], true).unwrap();
        assert_eq!(r.recovered.records.len(), 2);
        assert_eq!(
            r.cut,
            Some(Cut { segment: 0, offset: 2 * one as u64, torn: false, reason: "checksum mismatch".into() })
        );
    }

    /// A bad tail in a segment that is not the last: segments are synced
    /// before the next begins, so this is corruption too.
    #[test]
    fn a_bad_tail_before_the_last_segment_is_corruption() {
        let mut first = segment((1..=3).map(|v| rec("a", v)));
        first.truncate(first.len() - 3);
        let second = segment((4..=5).map(|v| rec("b", v)));
        let err = run(&[first.clone(), second.clone()], false).unwrap_err();
        assert!(err.to_string().contains("seg-0"), "{err}");
        let r = run(&[first, second], true).unwrap();
        assert_eq!(r.recovered.records.len(), 2);
        assert_eq!(r.cut.map(|c| c.segment), Some(0));
    }

    /// etcd's TestRepairFailDeleteDir shape: a last segment cut inside its
    /// first frame leaves nothing from it, and the earlier segments stand.
    #[test]
    fn a_last_segment_torn_in_its_first_frame_keeps_the_earlier_ones() {
        let first = segment((1..=50).map(|v| rec("a", v)));
        let mut last = segment((51..=52).map(|v| rec("a", v)));
        last.truncate(20);
        let r = run(&[first, last], false).unwrap();
        assert_eq!(r.recovered.records.len(), 50);
        assert_eq!(r.cut.map(|c| (c.segment, c.offset, c.torn)), Some((1, 0, true)));
    }

    #[test]
    fn epochs_write_ids_and_outcome_only_records_are_recovered() {
        let mut seg = Vec::new();
        encode(&Entry::Epoch(4), &mut seg);
        encode(&Entry::Write(rec("a", 7)), &mut seg);
        let absent_delete = Record {
            epoch: 4,
            update: Update { key: "gone".into(), version: 0, value: None, expires_at: None },
            write_id: Some(WriteId { origin: 9, incarnation: 1, seq: 1 }),
        };
        encode(&Entry::Write(absent_delete), &mut seg);
        encode(&Entry::Epoch(5), &mut seg);
        // A standby's segment holds its leader's snapshot stream too.
        encode(&Entry::WriteOutcome(WriteId { origin: 8, incarnation: 2, seq: 4 }, 6, 3), &mut seg);
        let r = run(&[seg], false).unwrap().recovered;
        assert_eq!(r.max_epoch, 5);
        assert_eq!(r.max_version, 7);
        assert_eq!(r.records.len(), 1, "a version-0 record changes no key");
        assert_eq!(
            r.write_ids,
            vec![
                (WriteId { origin: 2, incarnation: 3, seq: 7 }, 7, crate::slots::slot_of("a")),
                (WriteId { origin: 9, incarnation: 1, seq: 1 }, 0, crate::slots::slot_of("gone")),
                (WriteId { origin: 8, incarnation: 2, seq: 4 }, 6, 3)
            ]
        );
    }

    /// A slot move's records: a freeze holds until a drop, and a drop
    /// takes the slot's records before it, not the ones after (the slot
    /// came back).
    #[test]
    fn a_freeze_holds_until_a_drop_which_takes_the_slot_s_earlier_records() {
        use crate::log::codec::SlotChange;
        let slot = crate::slots::slot_of("a");
        let mut seg = Vec::new();
        encode(&Entry::Write(rec("a", 1)), &mut seg);
        encode(&Entry::Write(rec("b", 2)), &mut seg);
        encode(&Entry::Slot(slot, SlotChange::Freeze), &mut seg);
        encode(&Entry::Slot(7, SlotChange::Freeze), &mut seg);
        let r = run(std::slice::from_ref(&seg), false).unwrap().recovered;
        assert_eq!(r.frozen.iter().copied().collect::<Vec<_>>(), {
            let mut want = vec![slot, 7];
            want.sort();
            want
        });
        assert_eq!(r.records.len(), 2);
        encode(&Entry::Slot(slot, SlotChange::Drop), &mut seg);
        encode(&Entry::Write(rec("a", 3)), &mut seg);
        let r = run(&[seg], false).unwrap().recovered;
        assert_eq!(r.frozen.iter().copied().collect::<Vec<_>>(), vec![7]);
        let kept: Vec<(String, u64)> = r.records.iter().map(|r| (r.update.key.clone(), r.update.version)).collect();
        assert_eq!(kept, vec![("b".to_string(), 2), ("a".to_string(), 3)]);
    }

    /// A rolled-back move's thaw ends the freeze and keeps the slot's
    /// records, before and after it.
    #[test]
    fn a_thaw_ends_a_freeze_and_keeps_the_slot_s_records() {
        use crate::log::codec::SlotChange;
        let slot = crate::slots::slot_of("a");
        let mut seg = Vec::new();
        encode(&Entry::Write(rec("a", 1)), &mut seg);
        encode(&Entry::Slot(slot, SlotChange::Freeze), &mut seg);
        encode(&Entry::Slot(slot, SlotChange::Thaw), &mut seg);
        encode(&Entry::Write(rec("a", 2)), &mut seg);
        let r = run(&[seg], false).unwrap().recovered;
        assert!(r.frozen.is_empty());
        let kept: Vec<(String, u64)> = r.records.iter().map(|r| (r.update.key.clone(), r.update.version)).collect();
        assert_eq!(kept, vec![("a".to_string(), 1), ("a".to_string(), 2)]);
    }

    fn snapshot_bytes(next_segment: u64, records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&Entry::SnapshotHeader { next_segment, max_version: 40, max_epoch: 6 }, &mut out);
        for r in records {
            encode(&Entry::Write(r.clone()), &mut out);
        }
        encode(&Entry::WriteOutcome(WriteId { origin: 1, incarnation: 1, seq: 1 }, 3, 3), &mut out);
        encode(&Entry::SnapshotEnd { records: records.len() as u64, write_ids: 1 }, &mut out);
        out
    }

    #[test]
    fn snapshot_then_log_in_that_order() {
        let snap = decode_snapshot(&snapshot_bytes(3, &[rec("a", 1), rec("b", 2)])).unwrap();
        assert_eq!(snap.next_segment, 3);
        let seg = segment([rec("a", 41)]);
        let input = [SegmentBytes { path: Path::new("s"), bytes: &seg }];
        let r = replay(Some(snap), &input, false).unwrap().recovered;
        let keys: Vec<_> = r.records.iter().map(|r| (r.update.key.as_str(), r.update.version)).collect();
        assert_eq!(keys, vec![("a", 1), ("b", 2), ("a", 41)]);
        assert_eq!((r.max_version, r.max_epoch), (41, 6));
        assert_eq!(r.write_ids.len(), 2);
    }

    #[test]
    fn a_damaged_or_incomplete_snapshot_is_refused_with_its_offset() {
        let good = snapshot_bytes(2, &[rec("a", 1), rec("b", 2)]);
        let mut flipped = good.clone();
        let at = frame_len(25) + 30; // inside the first record
        flipped[at] ^= 1;
        assert_eq!(decode_snapshot(&flipped).unwrap_err().0, frame_len(25));
        let end = good.len() - frame_len(17);
        let (offset, reason) = decode_snapshot(&good[..end]).unwrap_err();
        assert_eq!(offset, end);
        assert!(reason.contains("incomplete"), "{reason}");
        let mut no_header = Vec::new();
        encode(&Entry::Write(rec("a", 1)), &mut no_header);
        assert!(decode_snapshot(&no_header).unwrap_err().1.contains("header"));
        let mut wrong_count = good[..end].to_vec();
        encode(&Entry::SnapshotEnd { records: 5, write_ids: 1 }, &mut wrong_count);
        assert!(decode_snapshot(&wrong_count).is_err());
    }
}
