//! Slots: how the key space is cut among root groups.
//!
//! A key belongs to one of [`SLOTS`] slots, `crc16(key) mod 1024`, where
//! `crc16` is CRC-16/XMODEM (polynomial 0x1021, initial value 0, as Redis
//! Cluster uses) over the key's UTF-8 bytes, or over its hash tag: when the
//! key holds a `{` followed later by a `}` with at least one byte between
//! them, only the bytes between the first `{` and the first `}` after it
//! are hashed, so `user:{42}:name` and `user:{42}:mail` share a slot. The
//! function is the same on every node and every version; since 1024
//! divides 16384, a key's slot is its Redis Cluster slot mod 1024.
//!
//! The [`SlotMap`] says which group owns each slot, with an epoch that
//! rises on every change. It lives in ZooKeeper (`/treecache/<c>/slots`) as
//! JSON with one line per range, readable with `zkCli get`:
//!
//! ```text
//! {"epoch":1,"ranges":[{"slots":"0-511","group":0},{"slots":"512-1023","group":1}]}
//! ```
//!
//! Pure: no I/O, no clocks.

use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// How many slots the key space has.
pub const SLOTS: u16 = 1024;

/// A root group's number (`--group`).
pub type GroupId = u32;

/// A slot: `0..SLOTS`.
pub type Slot = u16;

/// Where a slot is not known (a write outcome logged before outcomes
/// carried their key's slot): taken as every slot.
pub const UNKNOWN_SLOT: Slot = u16::MAX;

/// CRC-16/XMODEM, bit by bit: keys are short and this runs once per
/// routed request, so a table buys nothing measurable.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The part of a key that is hashed: its hash tag if it has a non-empty
/// one, else the whole key.
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The slot of a key.
pub fn slot_of(key: &str) -> Slot {
    crc16(hashed_part(key.as_bytes())) % SLOTS
}

/// A range of slots as the CLI and the map's JSON write it: `A-B` or `A`.
pub fn parse_range(text: &str) -> Result<RangeInclusive<Slot>, String> {
    let bad = || format!("slot range {text:?}: expected A-B or A, with 0 <= A <= B <= {}", SLOTS - 1);
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let a: Slot = a.parse().map_err(|_| bad())?;
    let b: Slot = b.parse().map_err(|_| bad())?;
    if a > b || b >= SLOTS {
        return Err(bad());
    }
    Ok(a..=b)
}

fn format_range(r: &RangeInclusive<Slot>) -> String {
    if r.start() == r.end() {
        r.start().to_string()
    } else {
        format!("{}-{}", r.start(), r.end())
    }
}

/// A set of slots as ranges: `3-5, 9, 1023`.
pub fn ranges_text(slots: &std::collections::BTreeSet<Slot>) -> String {
    let mut runs: Vec<RangeInclusive<Slot>> = Vec::new();
    for &s in slots {
        match runs.last_mut() {
            Some(r) if *r.end() + 1 == s => *r = *r.start()..=s,
            _ => runs.push(s..=s),
        }
    }
    runs.iter().map(format_range).collect::<Vec<_>>().join(", ")
}

/// Which group owns each slot, and the map's epoch (raised by every
/// change, so a router can tell the newer of two maps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    epoch: u64,
    owners: Vec<GroupId>,
}

/// One line of the map's JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeOwner {
    pub slots: String,
    pub group: GroupId,
}

#[derive(Serialize, Deserialize)]
struct MapJson {
    epoch: u64,
    ranges: Vec<RangeOwner>,
}

impl SlotMap {
    /// Every slot to one group: the map a new cluster starts with.
    pub fn single(group: GroupId) -> Self {
        SlotMap { epoch: 1, owners: vec![group; SLOTS as usize] }
    }

    /// Slots spread evenly over `groups` in contiguous ranges, in the
    /// order given (the first groups take one slot more when 1024 does not
    /// divide evenly).
    pub fn even(groups: &[GroupId], epoch: u64) -> Result<Self, String> {
        if groups.is_empty() {
            return Err("a slot map needs at least one group".into());
        }
        let n = groups.len();
        let per = SLOTS as usize / n;
        let extra = SLOTS as usize % n;
        let mut owners = Vec::with_capacity(SLOTS as usize);
        for (i, &g) in groups.iter().enumerate() {
            owners.extend(std::iter::repeat_n(g, per + usize::from(i < extra)));
        }
        Ok(SlotMap { epoch, owners })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The group that owns `slot`.
    pub fn owner(&self, slot: Slot) -> GroupId {
        self.owners[slot as usize]
    }

    /// The group that owns `key`'s slot.
    pub fn owner_of(&self, key: &str) -> GroupId {
        self.owner(slot_of(key))
    }

    /// The groups that own at least one slot, ascending.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut groups = self.owners.clone();
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    /// How many slots `group` owns.
    pub fn count(&self, group: GroupId) -> usize {
        self.owners.iter().filter(|&&g| g == group).count()
    }

    /// Maximal runs of consecutive slots with one owner, in slot order.
    pub fn ranges(&self) -> Vec<(RangeInclusive<Slot>, GroupId)> {
        let mut out: Vec<(RangeInclusive<Slot>, GroupId)> = Vec::new();
        for (slot, &g) in self.owners.iter().enumerate() {
            let slot = slot as Slot;
            match out.last_mut() {
                Some((r, owner)) if *owner == g && *r.end() + 1 == slot => *r = *r.start()..=slot,
                _ => out.push((slot..=slot, g)),
            }
        }
        out
    }

    /// The ranges `group` owns as text: `0-6, 8-511`; empty when none.
    pub fn ranges_of(&self, group: GroupId) -> String {
        let ranges: Vec<String> =
            self.ranges().iter().filter(|(_, g)| *g == group).map(|(r, _)| format_range(r)).collect();
        ranges.join(", ")
    }

    /// This map with `slots` given to `group` and the epoch raised.
    pub fn assign(&self, slots: RangeInclusive<Slot>, group: GroupId) -> Self {
        let mut next = self.clone();
        for s in slots {
            next.owners[s as usize] = group;
        }
        next.epoch += 1;
        next
    }

    /// This map with every slot of `slots` given to `group` and the epoch
    /// raised once.
    pub fn assign_all(&self, slots: impl IntoIterator<Item = Slot>, group: GroupId) -> Self {
        let mut next = self.clone();
        for s in slots {
            next.owners[s as usize] = group;
        }
        next.epoch += 1;
        next
    }

    pub fn to_json(&self) -> Vec<u8> {
        let ranges =
            self.ranges().into_iter().map(|(r, group)| RangeOwner { slots: format_range(&r), group }).collect();
        serde_json::to_vec(&MapJson { epoch: self.epoch, ranges }).expect("a slot map encodes")
    }

    /// Parses the JSON form; every slot must be covered exactly once.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let map: MapJson =
            serde_json::from_slice(data).map_err(|e| format!("slot map {:?}: {e}", String::from_utf8_lossy(data)))?;
        let mut owners: Vec<Option<GroupId>> = vec![None; SLOTS as usize];
        for line in &map.ranges {
            for s in parse_range(&line.slots)? {
                if let Some(before) = owners[s as usize].replace(line.group) {
                    return Err(format!("slot map: slot {s} is owned twice (groups {before} and {})", line.group));
                }
            }
        }
        let owners = owners
            .into_iter()
            .enumerate()
            .map(|(s, g)| g.ok_or_else(|| format!("slot map: slot {s} has no owner")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SlotMap { epoch: map.epoch, owners })
    }
}

/// Where a slot move stands, as its `moves/<slot>` znode records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveState {
    /// Asked for: the source copies the slot to the target.
    Copy,
    /// Frozen at the source (a record in its replicated log): its writes
    /// wait; the source sends what it holds of the slot once more.
    Frozen,
    /// Handed over (the map names the target, from `map_epoch` on): the
    /// source drops its copy once every live node routes by that epoch.
    Done,
    /// Frozen too long without a cutover: rolling back. Set before the
    /// source thaws the slot (it fences off any cutover of the move: those
    /// check the record's version); deleted once it has.
    #[serde(rename = "rolling_back")]
    RollingBack,
}

impl MoveState {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::Copy => "copy",
            MoveState::Frozen => "frozen",
            MoveState::Done => "done",
            MoveState::RollingBack => "rolling_back",
        }
    }
}

/// A slot move's znode, `moves/<slot>`:
/// `{"from":0,"to":1,"state":"copy","map_epoch":0}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub from: GroupId,
    pub to: GroupId,
    pub state: MoveState,
    /// The map epoch that handed the slot over (set with `done`).
    #[serde(default)]
    pub map_epoch: u64,
}

impl MoveRecord {
    pub fn new(from: GroupId, to: GroupId) -> Self {
        MoveRecord { from, to, state: MoveState::Copy, map_epoch: 0 }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a move record encodes")
    }

    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(data).map_err(|e| format!("slot move {:?}: {e}", String::from_utf8_lossy(data)))
    }
}

impl fmt::Display for SlotMap {
    /// `epoch 3: 0-511 → group 0, 512-1023 → group 1`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}:", self.epoch)?;
        for (i, (r, g)) in self.ranges().iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{} → group {g}", format_range(r))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The standard check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn a_key_s_slot_is_its_redis_cluster_slot_mod_1024() {
        // Redis: CLUSTER KEYSLOT foo = 12182, bar = 5061, hello = 866.
        assert_eq!(slot_of("foo"), 12182 % 1024);
        assert_eq!(slot_of("bar"), 5061 % 1024);
        assert_eq!(slot_of("hello"), 866);
    }

    #[test]
    fn hash_tags_put_keys_in_one_slot() {
        assert_eq!(slot_of("user:{42}:name"), slot_of("user:{42}:mail"));
        assert_eq!(slot_of("{42}"), slot_of("42"));
        // An empty tag, or no closing brace, hashes the whole key.
        assert_eq!(slot_of("a{}b"), crc16(b"a{}b") % SLOTS);
        assert_eq!(slot_of("a{b"), crc16(b"a{b") % SLOTS);
        // Only the first tag counts.
        assert_eq!(slot_of("{x}{y}"), slot_of("x"));
    }

    #[test]
    fn keys_spread_over_every_slot() {
        let mut seen = vec![0u32; SLOTS as usize];
        for i in 0..100_000 {
            seen[slot_of(&format!("key-{i}")) as usize] += 1;
        }
        let (min, max) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        assert!(*min > 40 && *max < 160, "100k keys over 1024 slots: min {min}, max {max}");
    }

    #[test]
    fn even_maps_split_1024_slots_in_contiguous_ranges() {
        let m = SlotMap::even(&[0, 1, 2], 1).unwrap();
        assert_eq!(m.ranges(), vec![(0..=341, 0), (342..=682, 1), (683..=1023, 2)]);
        assert_eq!((m.count(0), m.count(1), m.count(2)), (342, 341, 341));
        assert_eq!(m.groups(), vec![0, 1, 2]);
        assert_eq!(SlotMap::even(&[], 1).unwrap_err(), "a slot map needs at least one group");
    }

    #[test]
    fn the_json_form_round_trips_and_reads_as_ranges() {
        let m = SlotMap::single(0).assign(512..=1023, 1).assign(7..=7, 2);
        let json = String::from_utf8(m.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"epoch":3,"ranges":[{"slots":"0-6","group":0},{"slots":"7","group":2},{"slots":"8-511","group":0},{"slots":"512-1023","group":1}]}"#
        );
        assert_eq!(SlotMap::from_json(json.as_bytes()).unwrap(), m);
        assert_eq!(m.to_string(), "epoch 3: 0-6 → group 0, 7 → group 2, 8-511 → group 0, 512-1023 → group 1");
        assert_eq!(m.ranges_of(0), "0-6, 8-511");
        assert_eq!(m.ranges_of(9), "");
        let moved = m.assign_all([5, 7, 600], 3);
        assert_eq!(moved.epoch(), 4);
        assert_eq!((moved.owner(5), moved.owner(7), moved.owner(600), moved.owner(6)), (3, 3, 3, 0));
    }

    #[test]
    fn a_map_that_misses_or_doubles_a_slot_is_refused() {
        let missing = br#"{"epoch":1,"ranges":[{"slots":"0-1022","group":0}]}"#;
        assert_eq!(SlotMap::from_json(missing).unwrap_err(), "slot map: slot 1023 has no owner");
        let twice = br#"{"epoch":1,"ranges":[{"slots":"0-1023","group":0},{"slots":"5","group":1}]}"#;
        assert_eq!(SlotMap::from_json(twice).unwrap_err(), "slot map: slot 5 is owned twice (groups 0 and 1)");
        assert!(SlotMap::from_json(b"not json").unwrap_err().starts_with("slot map \"not json\""));
    }

    #[test]
    fn slot_sets_print_as_ranges() {
        let slots = std::collections::BTreeSet::from([3, 4, 5, 9, 11, 12, 1023]);
        assert_eq!(ranges_text(&slots), "3-5, 9, 11-12, 1023");
        assert_eq!(ranges_text(&Default::default()), "");
    }

    #[test]
    fn a_move_record_reads_as_zkcli_shows_it() {
        let rec = MoveRecord::new(0, 2);
        assert_eq!(rec.to_json(), br#"{"from":0,"to":2,"state":"copy","map_epoch":0}"#);
        let done = MoveRecord { state: MoveState::Done, map_epoch: 7, ..rec };
        assert_eq!(MoveRecord::from_json(&done.to_json()).unwrap(), done);
        assert!(MoveRecord::from_json(br#"{"from":0,"to":1,"state":"gone"}"#).unwrap_err().contains("unknown variant"));
    }

    #[test]
    fn slot_ranges_parse_or_say_what_is_wrong() {
        assert_eq!(parse_range("0-511").unwrap(), 0..=511);
        assert_eq!(parse_range("7").unwrap(), 7..=7);
        for bad in ["", "5-3", "0-1024", "a-b", "-1", "1-"] {
            assert_eq!(
                parse_range(bad).unwrap_err(),
                format!("slot range {bad:?}: expected A-B or A, with 0 <= A <= B <= 1023"),
                "{bad}"
            );
        }
    }
}
