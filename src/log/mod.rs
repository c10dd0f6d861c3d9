//! The root's commit log (DESIGN.md guarantee 3 and "Root restart"): every
//! committed write is appended here before it is acknowledged or pushed;
//! a restart rebuilds the store from the newest snapshot and the log after
//! it. Knows nothing of HTTP or of the tree: the node calls it.
//!
//! - [`codec`]: the frame format (length, CRC-32C, 8-byte alignment) and
//!   the records; pure.
//! - [`replay`]: recovery from bytes, torn tail versus corruption; pure.
//! - [`files`]: the only file I/O: the directory layout, the writer thread
//!   that owns the active segment (group commit), snapshot files.
//!
//! A standby (next issue) can take the same frames as a stream: a segment
//! is a run of self-checking frames, and a snapshot is one too.

pub mod codec;
mod files;
pub mod replay;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Histogram;
use crate::store::{Update, WriteId};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

pub use files::{SEGMENT_PREFIX, SNAPSHOT_PREFIX};

/// When the root's commit log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    Always,
    Everysec,
    Never,
}

impl Fsync {
    /// As the flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
            Fsync::Never => "never",
        }
    }
}

/// One committed write as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The root epoch that committed it.
    pub epoch: u64,
    /// Version 0: the write committed nothing (a delete of an absent key);
    /// only its write id's outcome is kept.
    pub update: Update,
    pub write_id: Option<WriteId>,
}

/// A point in a leader's replication stream: the leader of epoch `epoch`
/// numbers every frame it streams, `seq` from 1 (DESIGN.md "Root
/// failover"). A standby's log records the position its frames reach
/// ([`codec::Entry::Position`]), so that after a restart it can ask its
/// leader for the rest instead of a whole snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

/// What a start found on disk.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// Snapshot content first, then the log after it, in log order. Apply
    /// each if newer: order between keys does not matter, and a record
    /// seen twice (snapshots are fuzzy) changes nothing the second time.
    pub records: Vec<Record>,
    /// Write ids and the version each committed (0: nothing).
    pub write_ids: Vec<(WriteId, u64, u16)>,
    pub max_version: u64,
    pub max_epoch: u64,
    /// Where the log was cut, a torn tail or (under `--log-truncate-corrupt`)
    /// corruption: the file and the offset it now ends at.
    pub truncated_tail: Option<(PathBuf, u64)>,
    /// A standby's log: the last stream position it recorded, unless an
    /// epoch began after it (this root led since: what it holds may no
    /// longer be a prefix of any leader's stream).
    pub position: Option<Position>,
    /// Slots frozen for a move out of this group and not yet dropped.
    pub frozen: std::collections::BTreeSet<u16>,
}

/// What the node hands a snapshot: its whole state (a fuzzy dump is fine).
#[derive(Default)]
pub struct Snapshot {
    /// The records, a batch at a time, each batch read as it is written
    /// (the node's: one shard of its store), so that a snapshot holds one
    /// batch's copies of values at a time, not a copy of the whole store.
    pub records: Records,
    /// What is read once every record has been (see [`After`]).
    pub after: Later,
    /// A standby's stream position, read before the records were: they
    /// hold everything up to it.
    pub position: Option<Position>,
}

/// What a snapshot holds besides its records, read after them: a write
/// is stored and its outcome recorded at once, so every write whose record
/// the snapshot holds has its outcome there too (read before the records,
/// a write decided between the two would be in the snapshot without its
/// outcome, and committed again if resent after a restart).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct After {
    /// Write ids, the version each committed (0: nothing), its key's slot.
    pub write_ids: Vec<(WriteId, u64, u16)>,
    /// Slots frozen for a move (see [`codec::Entry::Slot`]).
    pub frozen: Vec<u16>,
}

/// Reads a snapshot's [`After`] once its records are read; an error
/// abandons the snapshot before it replaces anything (the state it was
/// reading changed under it: a standby starting over).
pub struct Later(pub Box<dyn FnOnce() -> Result<After, String> + Send>);

impl Later {
    /// Already at hand.
    pub fn of(after: After) -> Later {
        Later(Box::new(move || Ok(after)))
    }
}

impl Default for Later {
    fn default() -> Later {
        Later::of(After::default())
    }
}

/// A snapshot's records, batch by batch.
pub struct Records(pub Box<dyn Iterator<Item = Vec<Record>> + Send>);

impl Records {
    /// Records already at hand, as one batch.
    pub fn of(records: Vec<Record>) -> Records {
        Records(Box::new(std::iter::once(records)))
    }
}

impl Default for Records {
    fn default() -> Records {
        Records(Box::new(std::iter::empty()))
    }
}

/// Settings beyond the fsync policy.
#[derive(Clone, Debug)]
pub struct Options {
    /// A segment is closed (fsynced) and the next begun past this size.
    pub segment_bytes: u64,
    /// Log bytes written since the last snapshot that call for a new one.
    pub snapshot_bytes: u64,
    /// Cut at corruption instead of refusing to start (the operator's call).
    pub truncate_corrupt: bool,
    /// Fault injection for tests: every fsync fails.
    pub fault_fsync_error: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { segment_bytes: 64 << 20, snapshot_bytes: 64 << 20, truncate_corrupt: false, fault_fsync_error: false }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("commit log {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "commit log {} is corrupt at offset {offset}: {reason} (not a torn tail: refusing to start; \
         --log-truncate-corrupt cuts the log there, losing what follows)",
        file.display()
    )]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error(
        "snapshot {} is bad at offset {offset}: {reason}, and no older snapshot can replace it; \
         restore the data directory from a backup, or, if another root leads with the data, empty the \
         directory and start this root again: it rejoins as a standby and takes the leader's snapshot",
        file.display()
    )]
    BadSnapshot { file: PathBuf, offset: u64, reason: String },
    #[error("commit log {}: segment {missing} is missing (segments must run without gaps)", dir.display())]
    MissingSegment { dir: PathBuf, missing: u64 },
    #[error(
        "commit log {}: {} holds its lock {}; stop it, or give this root another --data-dir",
        dir.display(),
        holder.map_or("another process".to_string(), |pid| format!("another process (pid {pid})")),
        dir.join("LOCK").display()
    )]
    Locked { dir: PathBuf, holder: Option<u32> },
    #[error("the commit log writer has stopped")]
    Stopped,
    #[error("snapshot abandoned before it replaced anything: {0}")]
    Abandoned(String),
}

impl LogError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> LogError {
        LogError::Io { op, path: path.to_path_buf(), source }
    }
}

/// The log's figures for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes in the segment files.
    pub log_bytes: AtomicU64,
    pub segments: AtomicU64,
    /// Bytes appended since the last snapshot began.
    pub bytes_since_snapshot: AtomicU64,
    pub last_snapshot_version: AtomicU64,
    pub snapshots: AtomicU64,
    pub records: AtomicU64,
    /// Records covered by fsyncs: divided by `fsyncs`, records per fsync.
    pub records_synced: AtomicU64,
    pub fsync_seconds: Histogram,
}

impl Stats {
    /// The log's figures as a collector for the node's metrics registry
    /// (see `crate::metrics`): read from these atomics at each scrape.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(LogMetrics(self.clone()))
    }
}

#[derive(Debug)]
struct LogMetrics(Arc<Stats>);

impl Collector for LogMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut gauge = |name: &str, help: &str, value: f64| {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        gauge("log_bytes", "Bytes in the commit log's segment files.", get(&s.log_bytes) as f64)?;
        gauge("log_segments", "Commit log segment files.", get(&s.segments) as f64)?;
        let last = get(&s.last_snapshot_version) as f64;
        gauge("log_last_snapshot_version", "Highest version in the newest snapshot.", last)?;
        let synced = get(&s.records_synced);
        let fsyncs = s.fsync_seconds.count();
        let per = if fsyncs == 0 { 0.0 } else { synced as f64 / fsyncs as f64 };
        gauge("log_records_per_fsync", "Records per fsync since start (group commit).", per)?;
        let mut counter = |name: &str, help: &str, value: u64| {
            ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
        };
        counter("log_records", "Records appended to the commit log.", get(&s.records))?;
        counter("log_records_synced", "Records covered by commit log fsyncs.", synced)?;
        counter("log_fsyncs", "Commit log fdatasync calls.", fsyncs)?;
        counter("log_snapshots", "Snapshots written.", get(&s.snapshots))?;
        let help = "Commit log fdatasync latency.";
        s.fsync_seconds.encode(encoder.encode_descriptor(
            "log_fsync",
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?)
    }
}

enum Msg {
    /// Framed bytes; `sync` forces an fsync whatever the policy.
    Append { frames: Vec<u8>, records: u64, sync: bool, done: oneshot::Sender<()> },
    /// Close the active segment and begin the next; answers its number.
    Rotate { done: oneshot::Sender<u64> },
    /// everysec: a second passed.
    Tick,
}

/// Appends waiting for the writer before `append` waits for room.
const QUEUE: usize = 16 * 1024;

/// The commit log. Clone is a refcount bump.
#[derive(Clone)]
pub struct CommitLog {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    fsync: Fsync,
    opts: Options,
    tx: mpsc::Sender<Msg>,
    stats: Arc<Stats>,
    max_version: AtomicU64,
    max_epoch: AtomicU64,
    snapshotting: AtomicBool,
}

impl CommitLog {
    /// Opens (or creates) the log in `dir`: recovers, cuts a torn tail,
    /// and starts the writer thread. Blocking: call it before serving.
    pub fn open(dir: &Path, fsync: Fsync, opts: Options) -> Result<(CommitLog, Recovered), LogError> {
        let stats = Arc::new(Stats::default());
        let (recovered, active) = files::recover(dir, &opts, &stats)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = files::Writer::new(active, dir, fsync, &opts, stats.clone());
        std::thread::Builder::new()
            .name("commit-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::io("start the writer for", dir, e))?;
        if fsync == Fsync::Everysec {
            let weak = tx.downgrade();
            std::thread::Builder::new()
                .name("commit-log-tick".into())
                .spawn(move || files::tick(weak))
                .map_err(|e| LogError::io("start the fsync ticker for", dir, e))?;
        }
        let log = CommitLog {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                fsync,
                opts,
                tx,
                stats,
                max_version: AtomicU64::new(recovered.max_version),
                max_epoch: AtomicU64::new(recovered.max_epoch),
                snapshotting: AtomicBool::new(false),
            }),
        };
        Ok((log, recovered))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    /// Resolves once `rec` is durable per the policy: `always` after the
    /// fsync that covers it (shared with every append queued beside it),
    /// `everysec` and `never` after the write.
    pub async fn append(&self, rec: Record) -> Result<(), LogError> {
        self.shared.max_version.fetch_max(rec.update.version, Ordering::AcqRel);
        self.shared.max_epoch.fetch_max(rec.epoch, Ordering::AcqRel);
        let mut frames =
            Vec::with_capacity(64 + rec.update.key.len() + rec.update.value.as_ref().map_or(0, |v| v.len()));
        codec::encode(&codec::Entry::Write(rec), &mut frames);
        self.send(frames, 1, false).await
    }

    /// Appends frames already encoded (a standby's batch from its leader,
    /// or writes the leader also streams): `records` counts them, and
    /// `max_version`/`max_epoch` are the highest they carry. Durable as
    /// [`CommitLog::append`] promises.
    pub async fn append_frames(
        &self,
        frames: Vec<u8>,
        records: u64,
        max_version: u64,
        max_epoch: u64,
    ) -> Result<(), LogError> {
        self.shared.max_version.fetch_max(max_version, Ordering::AcqRel);
        self.shared.max_epoch.fetch_max(max_epoch, Ordering::AcqRel);
        self.send(frames, records, false).await
    }

    /// Records that epoch `epoch` began; fsynced whatever the policy.
    pub async fn append_epoch(&self, epoch: u64) -> Result<(), LogError> {
        self.shared.max_epoch.fetch_max(epoch, Ordering::AcqRel);
        let mut frames = Vec::new();
        codec::encode(&codec::Entry::Epoch(epoch), &mut frames);
        self.send(frames, 1, true).await
    }

    /// Resolves once everything appended before it is as durable as the
    /// policy promises (a write id seen again waits for its first append).
    pub async fn barrier(&self) -> Result<(), LogError> {
        self.send(Vec::new(), 0, false).await
    }

    /// Resolves once everything appended before it is fsynced (shutdown).
    pub async fn sync(&self) -> Result<(), LogError> {
        self.send(Vec::new(), 0, true).await
    }

    async fn send(&self, frames: Vec<u8>, records: u64, sync: bool) -> Result<(), LogError> {
        let (done, wait) = oneshot::channel();
        let msg = Msg::Append { frames, records, sync, done };
        self.shared.tx.send(msg).await.map_err(|_| LogError::Stopped)?;
        wait.await.map_err(|_| LogError::Stopped)
    }

    /// Whether enough log has grown since the last snapshot to write one
    /// (and none is being written).
    pub fn wants_snapshot(&self) -> bool {
        self.shared.stats.bytes_since_snapshot.load(Ordering::Relaxed) >= self.shared.opts.snapshot_bytes
            && !self.shared.snapshotting.load(Ordering::Acquire)
    }

    /// Writes a snapshot: begins a new segment and remembers its number,
    /// takes the node's state from `source` (every record in the earlier
    /// segments is in the store by then: the store is updated before the
    /// append), writes it to a temp file, fsyncs, renames, fsyncs the
    /// directory, then deletes the segments and snapshots it replaces.
    /// Appends go on meanwhile; only the rotation waits for the writer.
    /// Returns the snapshot's highest version, or `None` if another
    /// snapshot was under way.
    pub async fn snapshot<F>(&self, source: F) -> Result<Option<u64>, LogError>
    where
        F: FnOnce() -> Snapshot + Send + 'static,
    {
        let shared = &self.shared;
        if shared.snapshotting.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&shared.snapshotting);
        let (done, wait) = oneshot::channel();
        shared.tx.send(Msg::Rotate { done }).await.map_err(|_| LogError::Stopped)?;
        let next_segment = wait.await.map_err(|_| LogError::Stopped)?;
        shared.stats.bytes_since_snapshot.store(0, Ordering::Relaxed);
        let dir = shared.dir.clone();
        let stats = shared.stats.clone();
        let max_version = shared.max_version.load(Ordering::Acquire);
        let max_epoch = shared.max_epoch.load(Ordering::Acquire);
        let written = tokio::task::spawn_blocking(move || {
            let snap = source();
            files::write_snapshot(&dir, next_segment, max_version, max_epoch, snap, &stats)
        })
        .await
        .map_err(|_| LogError::Stopped)??;
        Ok(Some(written))
    }

    /// The fsync policy in force.
    pub fn fsync(&self) -> Fsync {
        self.shared.fsync
    }
}

/// A record for the log's tests: `key` at `version`, value `value N`.
#[cfg(test)]
pub(crate) fn test_record(key: &str, version: u64, write_id: Option<WriteId>) -> Record {
    Record {
        epoch: 1,
        update: Update {
            key: key.into(),
            version,
            value: Some(bytes::Bytes::from(format!("value {version}"))),
            expires_at: None,
        },
        write_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(key: &str, version: u64) -> Record {
        test_record(key, version, None)
    }

    fn opts() -> Options {
        Options { segment_bytes: 4096, ..Options::default() }
    }

    /// Opens `dir`, waiting for a dropped log's writer to let go of it.
    async fn reopen(dir: &Path, fsync: Fsync, opts: Options) -> (CommitLog, Recovered) {
        for _ in 0..200 {
            match CommitLog::open(dir, fsync, opts.clone()) {
                Err(LogError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => return other.expect("open the log"),
            }
        }
        panic!("the log in {} stayed locked", dir.display());
    }

    fn versions(r: &Recovered) -> Vec<u64> {
        r.records.iter().map(|r| r.update.version).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_come_back_after_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (log, recovered) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert!(recovered.records.is_empty());
        log.append_epoch(3).await.unwrap();
        for v in 1..=300 {
            log.append(rec(&format!("k{}", v % 7), v)).await.unwrap();
        }
        assert!(log.stats().segments.load(Ordering::Relaxed) > 2, "4 KiB segments rotate");
        drop(log);
        let (log, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert_eq!(versions(&r), (1..=300).collect::<Vec<_>>());
        assert_eq!((r.max_version, r.max_epoch, r.truncated_tail), (300, 3, None));
        log.append(rec("after", 301)).await.unwrap();
        drop(log);
        let (_, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert_eq!(r.max_version, 301);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_fsyncs_under_always() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = reopen(dir.path(), Fsync::Always, Options::default()).await;
        let n = 500;
        let appends = (1..=n).map(|v| {
            let log = log.clone();
            tokio::spawn(async move { log.append(rec(&format!("k{v}"), v)).await })
        });
        for done in futures::future::join_all(appends).await {
            done.unwrap().unwrap();
        }
        let fsyncs = log.stats().fsync_seconds.count();
        assert!(fsyncs >= 1 && fsyncs < n, "{n} appends took {fsyncs} fsyncs");
        assert_eq!(log.stats().records_synced.load(Ordering::Relaxed), n);
        drop(log);
        let (_, r) = reopen(dir.path(), Fsync::Always, Options::default()).await;
        assert_eq!(r.records.len() as u64, n);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn everysec_and_never_acknowledge_after_the_write() {
        for fsync in [Fsync::Everysec, Fsync::Never] {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = reopen(dir.path(), fsync, Options::default()).await;
            for v in 1..=50 {
                log.append(rec("k", v)).await.unwrap();
            }
            let len = std::fs::metadata(files::segment_path(dir.path(), 1)).unwrap().len();
            assert!(len > 0, "{fsync:?}: written before the answer");
            if fsync == Fsync::Everysec {
                // The ticker syncs within about a second, with no more appends.
                let until = std::time::Instant::now() + Duration::from_secs(10);
                while log.stats().records_synced.load(Ordering::Relaxed) < 50 {
                    assert!(std::time::Instant::now() < until, "everysec never synced");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } else {
                assert_eq!(log.stats().fsync_seconds.count(), 0, "never: the OS decides");
            }
            log.sync().await.unwrap();
            assert_eq!(log.stats().records_synced.load(Ordering::Relaxed), 50);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_replaces_the_segments_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = reopen(dir.path(), Fsync::Always, opts()).await;
        log.append_epoch(2).await.unwrap();
        for v in 1..=200 {
            log.append(rec(&format!("k{}", v % 10), v)).await.unwrap();
        }
        let before = log.stats().segments.load(Ordering::Relaxed);
        // The node's state: the newest version of each key.
        let state: Vec<Record> = (191..=200).map(|v| rec(&format!("k{}", v % 10), v)).collect();
        let id = WriteId { origin: 4, incarnation: 5, seq: 6 };
        let after = After { write_ids: vec![(id, 200, 7)], frozen: vec![3] };
        let snap = Snapshot { records: Records::of(state.clone()), after: Later::of(after), position: None };
        assert_eq!(log.snapshot(move || snap).await.unwrap(), Some(200));
        assert_eq!(log.stats().segments.load(Ordering::Relaxed), 1, "{before} segments before");
        assert_eq!(log.stats().last_snapshot_version.load(Ordering::Relaxed), 200);
        assert!(!log.wants_snapshot());
        for v in 201..=205 {
            log.append(rec("k1", v)).await.unwrap();
        }
        drop(log);
        let (_, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        let mut want: Vec<u64> = (191..=200).collect();
        want.extend(201..=205);
        assert_eq!(versions(&r), want);
        assert_eq!((r.max_version, r.max_epoch), (205, 2), "the epoch outlives its deleted segment");
        assert_eq!(r.write_ids, vec![(id, 200, 7)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_reads_what_follows_its_records_after_them_and_an_error_there_abandons_it() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = reopen(dir.path(), Fsync::Always, opts()).await;
        for v in 1..=20 {
            log.append(rec(&format!("k{v}"), v)).await.unwrap();
        }
        let batches_read = Arc::new(AtomicUsize::new(0));
        let counted = batches_read.clone();
        let records = Records(Box::new((1..=4u64).map(move |b| {
            counted.fetch_add(1, Ordering::AcqRel);
            (5 * b - 4..=5 * b).map(|v| rec(&format!("k{v}"), v)).collect()
        })));
        let seen = batches_read.clone();
        let after = Later(Box::new(move || match seen.load(Ordering::Acquire) {
            4 => Ok(After { write_ids: vec![], frozen: vec![7] }),
            n => Err(format!("read after {n} of 4 batches")),
        }));
        assert_eq!(log.snapshot(move || Snapshot { records, after, position: None }).await.unwrap(), Some(20));
        for v in 21..=25 {
            log.append(rec("k1", v)).await.unwrap();
        }
        // Abandoned: nothing replaced, nothing lost.
        let abandoned = || Snapshot {
            records: Records::of(vec![rec("never", 99)]),
            after: Later(Box::new(|| Err("the store changed under it".to_string()))),
            position: None,
        };
        let err = log.snapshot(abandoned).await.unwrap_err();
        assert!(matches!(err, LogError::Abandoned(ref why) if why.contains("changed under it")), "{err}");
        log.append(rec("k2", 26)).await.unwrap();
        drop(log);
        let (_, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        let mut want: Vec<u64> = (1..=20).collect();
        want.extend(21..=26);
        assert_eq!(versions(&r), want);
        assert_eq!(r.frozen, std::collections::BTreeSet::from([7]));
    }

    /// Frames and the position after them, as a standby appends a batch.
    fn batch_with_position(versions: std::ops::RangeInclusive<u64>, position: Position) -> (Vec<u8>, u64) {
        let mut frames = Vec::new();
        for v in versions.clone() {
            codec::encode(&codec::Entry::Write(rec(&format!("k{v}"), v)), &mut frames);
        }
        codec::encode(&codec::Entry::Position(position), &mut frames);
        (frames, versions.count() as u64)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_standbys_stream_position_survives_a_restart_and_a_snapshot_until_an_epoch_voids_it() {
        let dir = tempfile::tempdir().unwrap();
        let (log, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert_eq!(r.position, None);
        let (p1, p2) = (Position { epoch: 4, seq: 10 }, Position { epoch: 4, seq: 20 });
        let (frames, n) = batch_with_position(1..=10, p1);
        log.append_frames(frames, n, 10, 4).await.unwrap();
        drop(log);
        let (log, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert_eq!((r.position, r.records.len()), (Some(p1), 10));
        // A snapshot keeps the position it was given; later frames win.
        let state: Vec<Record> = (1..=10).map(|v| rec(&format!("k{v}"), v)).collect();
        let snap = Snapshot { records: Records::of(state), after: Later::default(), position: Some(p1) };
        log.snapshot(move || snap).await.unwrap();
        drop(log);
        let (log, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert_eq!(r.position, Some(p1), "from the snapshot");
        let (frames, n) = batch_with_position(11..=20, p2);
        log.append_frames(frames, n, 20, 4).await.unwrap();
        drop(log);
        let (log, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert_eq!((r.position, r.max_version), (Some(p2), 20));
        // This root led (an epoch began here): its log is no longer a
        // prefix of epoch 4's stream.
        log.append_epoch(5).await.unwrap();
        drop(log);
        let (_, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert_eq!((r.position, r.max_epoch), (None, 5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn size_asks_for_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = reopen(dir.path(), Fsync::Never, Options { snapshot_bytes: 2000, ..opts() }).await;
        assert!(!log.wants_snapshot());
        for v in 1..=60 {
            log.append(rec("k", v)).await.unwrap();
        }
        assert!(log.wants_snapshot());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_tail_is_cut_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = reopen(dir.path(), Fsync::Always, Options::default()).await;
        for v in 1..=10 {
            log.append(rec("k", v)).await.unwrap();
        }
        drop(log);
        let seg = files::segment_path(dir.path(), 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
        let (log, r) = reopen(dir.path(), Fsync::Always, Options::default()).await;
        assert_eq!(r.records.len(), 9);
        let one = len / 10;
        assert_eq!(r.truncated_tail, Some((seg.clone(), 9 * one)));
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), 9 * one);
        log.append(rec("k", 11)).await.unwrap();
        drop(log);
        let (_, r) = reopen(dir.path(), Fsync::Always, Options::default()).await;
        assert_eq!(versions(&r), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corruption_refuses_then_the_flag_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = reopen(dir.path(), Fsync::Always, opts()).await;
        for v in 1..=100 {
            log.append(rec("k", v)).await.unwrap();
        }
        drop(log);
        let seg = files::segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[100] ^= 0x20;
        std::fs::write(&seg, &bytes).unwrap();
        let err = loop {
            match CommitLog::open(dir.path(), Fsync::Always, opts()) {
                Err(LogError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => break e,
                Ok(_) => panic!("opened a corrupt log"),
            }
        };
        let msg = err.to_string();
        assert!(msg.contains(&seg.display().to_string()) && msg.contains("offset"), "{msg}");
        let later = files::segment_path(dir.path(), 2);
        assert!(later.exists());
        let (_, r) = reopen(dir.path(), Fsync::Always, Options { truncate_corrupt: true, ..opts() }).await;
        assert!(r.records.len() < 5, "cut in the first frames: {}", r.records.len());
        assert!(!later.exists(), "the segments after the cut go");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_segment_or_a_held_directory_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = reopen(dir.path(), Fsync::Always, opts()).await;
        let held = CommitLog::open(dir.path(), Fsync::Always, opts()).map(|_| ()).unwrap_err();
        assert!(matches!(held, LogError::Locked { holder: Some(pid), .. } if pid == std::process::id()), "{held}");
        let msg = held.to_string();
        let lock = dir.path().join("LOCK").display().to_string();
        assert!(msg.contains(&format!("(pid {})", std::process::id())) && msg.contains(&lock), "{msg}");
        for v in 1..=200 {
            log.append(rec("k", v)).await.unwrap();
        }
        drop(log);
        std::fs::remove_file(files::segment_path(dir.path(), 2)).unwrap();
        let err = loop {
            match CommitLog::open(dir.path(), Fsync::Always, opts()) {
                Err(LogError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => break e,
                Ok(_) => panic!("opened a log with a gap"),
            }
        };
        assert!(matches!(err, LogError::MissingSegment { missing: 2, .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_snapshot_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = reopen(dir.path(), Fsync::Always, opts()).await;
        log.append(rec("k", 1)).await.unwrap();
        log.snapshot(|| Snapshot { records: Records::of(vec![rec("k", 1)]), ..Snapshot::default() }).await.unwrap();
        drop(log);
        let snap = dir.path().join(format!("{SNAPSHOT_PREFIX}{:020}.snap", 2));
        let mut bytes = std::fs::read(&snap).unwrap();
        bytes[50] ^= 1;
        std::fs::write(&snap, &bytes).unwrap();
        let err = loop {
            match CommitLog::open(dir.path(), Fsync::Always, opts()) {
                Err(LogError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => break e,
                Ok(_) => panic!("opened with a bad snapshot"),
            }
        };
        assert!(matches!(err, LogError::BadSnapshot { offset: 40, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("restore the data directory") && msg.contains("rejoins as a standby"), "{msg}");
        // A leftover temp file is a snapshot that never got its name: ignored.
        std::fs::write(&snap, b"").unwrap();
        std::fs::remove_file(&snap).unwrap();
        std::fs::write(dir.path().join("snapshot.tmp"), b"half").unwrap();
        let (_, r) = reopen(dir.path(), Fsync::Always, opts()).await;
        assert!(r.records.is_empty(), "segment 1 went with the snapshot");
        assert!(!dir.path().join("snapshot.tmp").exists());
    }
}
