//! Formats between nodes: the binary batch of updates (pushes down, writes
//! up) and the small JSON messages (registration, topology, write results).
//!
//! A batch is `[count u32]` then per update
//! `[key_len u16][key][version u64][flags u8][expires_at u64]?[value_len u32][value]?`,
//! big-endian. Flags: bit 0 has a value (else tombstone), bit 1 has an expiry.
//! A write batch (up the tree) is the same with a write id after the flags
//! (`[origin u64][incarnation u64][seq u64]`, flag bit 2) and flag bit 3 for
//! a write whose sender waits for the root's commit (ack=root).
//! A conditional write carries its condition after the write id (flag bit
//! 5, `[kind u8]` then, for kind 3, `[version u64]`; kinds: 1 only if
//! absent, 2 only if present, 3 only if at that version): the root decides
//! it. An unconditional write is encoded as before the field existed; a
//! node built before it refuses the flag as unknown (400), and the sender
//! then fails those conditional writes instead of retrying them
//! (docs/architecture.md, rolling upgrades).
//! A push may carry, per update, the root's wall-clock time of its commit
//! in microseconds since the Unix epoch (`[committed_at u64]` after the
//! expiry, flag bit 4), from which each node measures its push lag. The
//! field is optional, so a batch without it (from a node built before it)
//! decodes as before; a node built before it refuses the flag as unknown,
//! which is why a tree is upgraded from its leaves up, the root last
//! (docs/architecture.md).
//! Decoding slices values out of the received `Bytes`, so a value travels
//! from socket to store to the next push without a copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::coherence::Mode;
use crate::store::{Condition, NodeId, Update, Version, WriteId};

const HAS_VALUE: u8 = 1;
const HAS_EXPIRY: u8 = 2;
const HAS_WRITE_ID: u8 = 4;
const ACK_ROOT: u8 = 8;
const HAS_COMMIT_TIME: u8 = 16;
const HAS_CONDITION: u8 = 32;
const KNOWN_FLAGS: u8 = HAS_VALUE | HAS_EXPIRY | HAS_WRITE_ID | ACK_ROOT | HAS_COMMIT_TIME | HAS_CONDITION;
const IF_ABSENT: u8 = 1;
const IF_PRESENT: u8 = 2;
const IF_VERSION: u8 = 3;
/// The message a node gives a write batch with flags it does not know
/// (a 400): how a sender tells a parent built before a flag.
pub const UNKNOWN_FLAGS: &str = "unknown flags";
/// Upper bound on updates in one batch, so a corrupt count cannot make the
/// decoder reserve gigabytes.
pub const MAX_BATCH: usize = 1 << 20;

/// When a write is acknowledged (`?ack=` on `/kv`, `--resp-ack` for RESP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ack {
    /// Once the parent has it.
    Parent,
    /// Once the root has committed it.
    Root,
}

impl Ack {
    pub fn parse(s: &str) -> Option<Ack> {
        match s {
            "parent" => Some(Ack::Parent),
            "root" => Some(Ack::Root),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ack::Parent => "parent",
            Ack::Root => "root",
        }
    }
}

/// A client write on its way to the root: the change (version 0 until
/// committed), its id, whether the sender waits for the commit, and the
/// condition the root must find true to commit it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub update: Update,
    pub id: WriteId,
    pub ack_root: bool,
    pub cond: Condition,
}

/// One update in a push, with the root's wall-clock time of its commit
/// (µs since the Unix epoch) when known: updates a node pushes on after a
/// fill or a write's answer (not the root's push) carry none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    pub update: Update,
    pub committed_us: Option<u64>,
}

/// Bytes an update takes in a batch (at most: with a commit time).
pub fn encoded_len(u: &Update) -> usize {
    2 + u.key.len() + 8 + 1 + 8 + 8 + 4 + u.value.as_ref().map_or(0, Bytes::len)
}

/// A write id and, at most, a condition.
const WRITE_ID_LEN: usize = 24 + 9;

fn put_update(buf: &mut BytesMut, u: &Update, write: Option<&Write>, committed_us: Option<u64>) {
    buf.put_u16(u.key.len() as u16);
    buf.put_slice(u.key.as_bytes());
    buf.put_u64(u.version);
    let mut flags = if u.value.is_some() { HAS_VALUE } else { 0 } | if u.expires_at.is_some() { HAS_EXPIRY } else { 0 };
    if let Some(w) = write {
        flags |= HAS_WRITE_ID | if w.ack_root { ACK_ROOT } else { 0 };
        flags |= if w.cond.is_conditional() { HAS_CONDITION } else { 0 };
    }
    if committed_us.is_some() {
        flags |= HAS_COMMIT_TIME;
    }
    buf.put_u8(flags);
    if let Some(w) = write {
        buf.put_u64(w.id.origin);
        buf.put_u64(w.id.incarnation);
        buf.put_u64(w.id.seq);
        match w.cond {
            Condition::Always => {}
            Condition::IfAbsent => buf.put_u8(IF_ABSENT),
            Condition::IfPresent => buf.put_u8(IF_PRESENT),
            Condition::IfVersion(v) => {
                buf.put_u8(IF_VERSION);
                buf.put_u64(v);
            }
        }
    }
    if let Some(at) = u.expires_at {
        buf.put_u64(at);
    }
    if let Some(at) = committed_us {
        buf.put_u64(at);
    }
    if let Some(value) = &u.value {
        buf.put_u32(value.len() as u32);
        buf.put_slice(value);
    }
}

/// Encodes a push batch.
pub fn encode_pushes(pushes: &[Push]) -> Bytes {
    let size: usize = 4 + pushes.iter().map(|p| encoded_len(&p.update)).sum::<usize>();
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u32(pushes.len() as u32);
    for p in pushes {
        put_update(&mut buf, &p.update, None, p.committed_us);
    }
    buf.freeze()
}

/// Encodes a push batch of updates without commit times.
pub fn encode_updates(updates: &[Update]) -> Bytes {
    let size: usize = 4 + updates.iter().map(encoded_len).sum::<usize>();
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u32(updates.len() as u32);
    for u in updates {
        put_update(&mut buf, u, None, None);
    }
    buf.freeze()
}

/// Encodes writes into one batch.
pub fn encode_writes(writes: &[Write]) -> Bytes {
    let size: usize = 4 + writes.iter().map(|w| encoded_len(&w.update) + WRITE_ID_LEN).sum::<usize>();
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u32(writes.len() as u32);
    for w in writes {
        put_update(&mut buf, &w.update, Some(w), None);
    }
    buf.freeze()
}

/// One update as a batch carries it.
struct Taken {
    update: Update,
    /// Write batches: the write's id, whether it waits for the root, and
    /// its condition.
    write: Option<(WriteId, bool, Condition)>,
    /// Push batches: the root's commit time, µs.
    committed_us: Option<u64>,
}

fn take_update(buf: &mut Bytes, i: usize) -> Result<Taken, String> {
    let key_len = take_u16(buf, "key length")? as usize;
    let key = take_bytes(buf, key_len, "key")?;
    let key = String::from_utf8(key.to_vec()).map_err(|_| format!("update {i}: key is not UTF-8"))?;
    let version = take_u64(buf, "version")?;
    let flags = take_u8(buf, "flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("update {i}: {UNKNOWN_FLAGS} {flags:#04x}"));
    }
    if flags & (ACK_ROOT | HAS_CONDITION) != 0 && flags & HAS_WRITE_ID == 0 {
        return Err(format!("update {i}: flags {flags:#04x}: ack=root or a condition without a write id"));
    }
    let write = if flags & HAS_WRITE_ID != 0 {
        let id = WriteId {
            origin: take_u64(buf, "write origin")?,
            incarnation: take_u64(buf, "write incarnation")?,
            seq: take_u64(buf, "write seq")?,
        };
        let cond = if flags & HAS_CONDITION != 0 {
            match take_u8(buf, "condition")? {
                IF_ABSENT => Condition::IfAbsent,
                IF_PRESENT => Condition::IfPresent,
                IF_VERSION => Condition::IfVersion(take_u64(buf, "condition version")?),
                kind => return Err(format!("update {i}: unknown condition {kind}")),
            }
        } else {
            Condition::Always
        };
        Some((id, flags & ACK_ROOT != 0, cond))
    } else {
        None
    };
    let expires_at = if flags & HAS_EXPIRY != 0 { Some(take_u64(buf, "expiry")?) } else { None };
    let committed_us = if flags & HAS_COMMIT_TIME != 0 { Some(take_u64(buf, "commit time")?) } else { None };
    let value = if flags & HAS_VALUE != 0 {
        let len = take_u32(buf, "value length")? as usize;
        Some(take_bytes(buf, len, "value")?)
    } else {
        None
    };
    Ok(Taken { update: Update { key, version, value, expires_at }, write, committed_us })
}

fn decode_batch<T>(body: &Bytes, mut each: impl FnMut(usize, Taken) -> Result<T, String>) -> Result<Vec<T>, String> {
    let mut buf = body.clone();
    let count = take_u32(&mut buf, "count")? as usize;
    if count > MAX_BATCH {
        return Err(format!("batch claims {count} updates, limit {MAX_BATCH}"));
    }
    let mut out = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        let taken = take_update(&mut buf, i)?;
        out.push(each(i, taken)?);
    }
    if buf.has_remaining() {
        return Err(format!("{} trailing bytes after {count} updates", buf.remaining()));
    }
    Ok(out)
}

/// Decodes a push batch; values are slices of `body`, not copies.
pub fn decode_pushes(body: &Bytes) -> Result<Vec<Push>, String> {
    decode_batch(body, |i, t| match t.write {
        None => Ok(Push { update: t.update, committed_us: t.committed_us }),
        Some(_) => Err(format!("update {i}: a push carries no write id")),
    })
}

/// Decodes a write batch: every write carries its id, and no commit time
/// (it is not committed yet).
pub fn decode_writes(body: &Bytes) -> Result<Vec<Write>, String> {
    decode_batch(body, |i, t| match (t.write, t.committed_us) {
        (Some((id, ack_root, cond)), None) => Ok(Write { update: t.update, id, ack_root, cond }),
        (None, _) => Err(format!("write {i}: no write id")),
        (Some(_), Some(_)) => Err(format!("write {i}: a write carries no commit time")),
    })
}

fn need(buf: &Bytes, n: usize, what: &str) -> Result<(), String> {
    if buf.remaining() < n {
        Err(format!("batch truncated in {what}"))
    } else {
        Ok(())
    }
}
fn take_u8(buf: &mut Bytes, what: &str) -> Result<u8, String> {
    need(buf, 1, what)?;
    Ok(buf.get_u8())
}
fn take_u16(buf: &mut Bytes, what: &str) -> Result<u16, String> {
    need(buf, 2, what)?;
    Ok(buf.get_u16())
}
fn take_u32(buf: &mut Bytes, what: &str) -> Result<u32, String> {
    need(buf, 4, what)?;
    Ok(buf.get_u32())
}
fn take_u64(buf: &mut Bytes, what: &str) -> Result<u64, String> {
    need(buf, 8, what)?;
    Ok(buf.get_u64())
}
fn take_bytes(buf: &mut Bytes, n: usize, what: &str) -> Result<Bytes, String> {
    need(buf, n, what)?;
    Ok(buf.split_to(n))
}

/// `POST /clients/register` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub url: String,
    #[serde(default)]
    pub id: Option<NodeId>,
}

/// `POST /clients/register` answer (DESIGN.md fields, plus `depth`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    pub id: NodeId,
    pub zk_path: String,
    pub parent_id: NodeId,
    pub parent_url: String,
    pub mode: Mode,
    pub max_age_ms: Option<u64>,
    pub epoch: u64,
    pub depth: u32,
    /// True when the root placed the node now (it was not in the tree):
    /// whatever the node cached before is unknown to its new parent.
    pub fresh: bool,
    /// The node's full place, children included.
    pub topology: Topology,
}

/// One node as the tree sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub url: String,
}

/// A node's place in the tree, as the root tells it (`POST /internal/topology`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Topology {
    pub id: NodeId,
    pub parent: Option<Peer>,
    pub children: Vec<Peer>,
    pub depth: u32,
    pub epoch: u64,
    /// The registry's change counter when this was computed: a node keeps
    /// the newest, so notifications that arrive out of order do no harm.
    #[serde(default)]
    pub seq: u64,
}

impl Topology {
    pub fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    pub fn role(&self) -> &'static str {
        match (&self.parent, self.children.is_empty()) {
            (None, _) => "root",
            (Some(_), false) => "inner",
            (Some(_), true) => "leaf",
        }
    }

    pub fn child(&self, id: NodeId) -> Option<&Peer> {
        self.children.iter().find(|c| c.id == id)
    }
}

/// The outcome of one write in a forwarded batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriteResult {
    /// Committed at this version.
    Committed { version: Version, created: bool },
    /// A delete of a key the root does not have.
    Absent,
    /// Accepted by the parent, to be committed (ack=parent).
    Accepted,
    /// The parent has the write queued and is still waiting for the root:
    /// send the same write (same id) again later to learn the outcome.
    InProgress,
    /// Could not be forwarded.
    Failed { error: String },
    /// An ack=root write the root did not commit: fewer roots in sync
    /// than `--min-insync`. Nothing was committed; the client may retry.
    InsyncBelowMin { have: usize, need: usize },
    /// An ack=root write committed at `version`, but a standby left the
    /// in-sync set while it waited: it is held by fewer roots than
    /// `--min-insync` asks, and may be lost if the leader fails.
    InsyncBelowMinAfter { version: Version, have: usize, need: usize },
    /// A conditional write whose condition the root found false: nothing
    /// was written. `current`: the key's live version then, if any.
    ConditionFailed { current: Option<Version> },
    /// The root refused the write: it would have grown the root's store
    /// past `--max-memory` (`max`; `bytes` held then). Nothing was written.
    /// (A node built before it cannot read this answer: upgrade the root
    /// last, as always.)
    RootFull { bytes: u64, max: u64 },
    /// The key's slot is frozen for a move: not decided, send it again
    /// shortly (once handed over it goes to the new owner). Only a root
    /// answers it, to its child (a depth-1 node); as a write's outcome it
    /// means the write waited [`FROZEN_WAIT`](crate::node::FROZEN_WAIT)
    /// and was given up, nothing written (a node's own client hears that).
    SlotMoving { slot: u16 },
}

impl WriteResult {
    /// The version a write was committed at, if it was.
    pub fn version(&self) -> Option<Version> {
        match self {
            WriteResult::Committed { version, .. } | WriteResult::InsyncBelowMinAfter { version, .. } => Some(*version),
            _ => None,
        }
    }
}

/// A parent's answer to a batch of writes: one result per write, in order,
/// and for each whether the parent holds the sender as a holder of the
/// write's key in its current store generation (so the sender may store a
/// commit as current; see `crate::store::Answer`). Missing or short:
/// not confirmed. Then the outcomes the parent owes the sender of writes
/// it answered earlier, before the root had decided them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteResults {
    pub results: Vec<WriteResult>,
    #[serde(default)]
    pub confirmed: Vec<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<Notice>,
}

/// The outcome of a write a parent answered `Accepted` or `InProgress`,
/// sent to the child in a later answer once the root has decided it.
/// Numbered per parent process: the child says the highest number it has
/// (`?seen=N`) in its next request, and the parent sends each notice until
/// then. `confirmed` as in [`WriteResults`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notice {
    pub seq: u64,
    pub id: WriteId,
    pub result: WriteResult,
    #[serde(default)]
    pub confirmed: bool,
}

/// A child's answer to a push: the keys it no longer holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushReply {
    pub not_held: Vec<String>,
}

/// Keys a parent asks a child to drop, or a child tells its parent it dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyList {
    pub keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Update> {
        vec![
            Update { key: "a".into(), version: 1, value: Some(Bytes::from_static(b"hello")), expires_at: None },
            Update { key: "b/ключ".into(), version: u64::MAX, value: None, expires_at: Some(1_700_000_000_000) },
            Update { key: "c".into(), version: 7, value: Some(Bytes::new()), expires_at: Some(5) },
        ]
    }

    /// A batch of one update of key `k` up to its flags byte.
    fn one_update_of_key_k(version: u64, flags: u8) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(1);
        buf.put_u16(1);
        buf.put_slice(b"k");
        buf.put_u64(version);
        buf.put_u8(flags);
        buf
    }

    fn pushes() -> Vec<Push> {
        sample()
            .into_iter()
            .zip([Some(1_700_000_000_123_456), None, Some(0)])
            .map(|(update, committed_us)| Push { update, committed_us })
            .collect()
    }

    fn untimed(updates: Vec<Update>) -> Vec<Push> {
        updates.into_iter().map(|update| Push { update, committed_us: None }).collect()
    }

    #[test]
    fn batch_round_trips() {
        assert_eq!(decode_pushes(&encode_pushes(&pushes())).unwrap(), pushes());
        assert_eq!(decode_pushes(&encode_updates(&sample())).unwrap(), untimed(sample()));
        assert_eq!(decode_pushes(&encode_updates(&[])).unwrap(), vec![]);
    }

    #[test]
    fn a_batch_without_commit_times_is_the_format_from_before_them() {
        // Byte for byte what a node built before commit times sends: no
        // flag bit 4, no field; such a batch still decodes.
        let mut old = one_update_of_key_k(9, HAS_VALUE);
        old.put_u32(2);
        old.put_slice(b"v1");
        let old = old.freeze();
        let update = Update { key: "k".into(), version: 9, value: Some(Bytes::from_static(b"v1")), expires_at: None };
        assert_eq!(encode_updates(std::slice::from_ref(&update)), old);
        assert_eq!(decode_pushes(&old).unwrap(), untimed(vec![update]));
    }

    #[test]
    fn truncated_or_padded_batches_are_refused() {
        let encoded = encode_pushes(&pushes());
        for cut in 0..encoded.len() {
            assert!(decode_pushes(&encoded.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut padded = BytesMut::from(&encoded[..]);
        padded.put_u8(0);
        assert!(decode_pushes(&padded.freeze()).unwrap_err().contains("trailing"));
    }

    #[test]
    fn write_batches_carry_ids_and_acks() {
        let writes: Vec<Write> = sample()
            .into_iter()
            .enumerate()
            .map(|(i, update)| Write {
                update,
                id: WriteId { origin: 3, incarnation: u64::MAX - i as u64, seq: i as u64 },
                ack_root: i % 2 == 0,
                cond: [Condition::Always, Condition::IfAbsent, Condition::IfVersion(u64::MAX - 1)][i % 3],
            })
            .collect();
        let encoded = encode_writes(&writes);
        assert_eq!(decode_writes(&encoded).unwrap(), writes);
        for cut in 0..encoded.len() {
            assert!(decode_writes(&encoded.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(decode_pushes(&encoded).unwrap_err().contains("no write id"));
        assert!(decode_writes(&encode_updates(&sample())).unwrap_err().contains("no write id"));
    }

    #[test]
    fn a_write_with_a_commit_time_is_refused() {
        let w = Write {
            update: sample().remove(0),
            id: WriteId { origin: 1, incarnation: 1, seq: 1 },
            ack_root: false,
            cond: Condition::Always,
        };
        let mut buf = BytesMut::new();
        buf.put_u32(1);
        put_update(&mut buf, &w.update, Some(&w), Some(5));
        assert!(decode_writes(&buf.freeze()).unwrap_err().contains("no commit time"));
    }

    #[test]
    fn an_unconditional_write_is_the_format_from_before_conditions_and_conditions_round_trip() {
        let update = Update { key: "k".into(), version: 0, value: Some(Bytes::from_static(b"v1")), expires_at: None };
        let id = WriteId { origin: 2, incarnation: 3, seq: 4 };
        let write = |cond| Write { update: update.clone(), id, ack_root: true, cond };
        // Byte for byte what a node built before conditions sends.
        let mut old = one_update_of_key_k(0, HAS_VALUE | HAS_WRITE_ID | ACK_ROOT);
        old.put_u64(2);
        old.put_u64(3);
        old.put_u64(4);
        old.put_u32(2);
        old.put_slice(b"v1");
        assert_eq!(encode_writes(&[write(Condition::Always)]), old.freeze());
        for cond in [Condition::IfAbsent, Condition::IfPresent, Condition::IfVersion(0), Condition::IfVersion(u64::MAX)]
        {
            let encoded = encode_writes(&[write(cond)]);
            assert_eq!(decode_writes(&encoded).unwrap(), vec![write(cond)]);
            assert!(decode_pushes(&encoded).is_err());
        }
        let mut bad = one_update_of_key_k(0, HAS_WRITE_ID | HAS_CONDITION);
        bad.put_slice(&[0; 24]);
        bad.put_u8(9);
        assert!(decode_writes(&bad.freeze()).unwrap_err().contains("unknown condition 9"));
        let no_id = one_update_of_key_k(0, HAS_CONDITION);
        assert!(decode_writes(&no_id.freeze()).unwrap_err().contains("without a write id"));
    }

    #[test]
    fn unknown_flags_are_refused() {
        let buf = one_update_of_key_k(1, 0x40);
        assert_eq!(KNOWN_FLAGS & 0x40, 0);
        assert!(decode_pushes(&buf.freeze()).unwrap_err().contains("unknown flags"));
    }

    #[test]
    fn absurd_counts_are_refused() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert!(decode_pushes(&buf.freeze()).unwrap_err().contains("limit"));
    }

    #[test]
    fn roles_follow_the_topology() {
        let peer = |id| Peer { id, url: format!("http://n{id}") };
        let mut t = Topology { id: 1, parent: None, children: vec![peer(2)], depth: 0, epoch: 1, seq: 0 };
        assert_eq!(t.role(), "root");
        t.parent = Some(peer(9));
        assert_eq!(t.role(), "inner");
        t.children.clear();
        assert_eq!(t.role(), "leaf");
    }
}
