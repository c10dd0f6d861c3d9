//! The commit log's file I/O, and nothing else: the directory layout,
//! recovery's reads and cuts, the writer thread that owns the active
//! segment, and snapshot files.
//!
//! ```text
//! DIR/LOCK                               flock: one process per directory
//! DIR/segment-00000000000000000007.log   frames, appended; 7 = its number
//! DIR/snapshot-00000000000000000007.snap covers every segment below 7
//! DIR/snapshot.tmp                       a snapshot being written
//! ```
//!
//! The writer thread is the only code that writes a segment. It takes
//! everything queued, writes it with one `write`, and under `always` calls
//! one `fdatasync` before waking every append it covered (group commit).
//! A segment is fsynced before the next is begun, whatever the policy, so
//! only the last segment can end torn. A failed write or fsync is fatal:
//! the process exits (after a failed fsync the kernel may have dropped the
//! dirty pages, so a retry could report success over lost data).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::codec::{self, Entry};
use super::replay::{self, SegmentBytes, SnapshotContent};
use super::Fsync;
use super::{LogError, Msg, Options, Recovered, Snapshot, Stats};

pub const SEGMENT_PREFIX: &str = "segment-";
pub const SNAPSHOT_PREFIX: &str = "snapshot-";
const SEGMENT_SUFFIX: &str = ".log";
const SNAPSHOT_SUFFIX: &str = ".snap";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
/// Most bytes one group write takes before it is written and synced.
const MAX_BATCH: usize = 8 << 20;

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{seq:020}{SEGMENT_SUFFIX}"))
}

fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{seq:020}{SNAPSHOT_SUFFIX}"))
}

fn parse_seq(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

/// The segment being appended to.
pub struct Active {
    file: File,
    seq: u64,
    len: u64,
    /// Held for the process's life: the flock on DIR/LOCK.
    _lock: File,
}

fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| LogError::io("open", &path, e))?;
    // SAFETY: flock on a descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        // The holder wrote its pid there when it took the lock.
        let holder = std::fs::read_to_string(&path).ok().and_then(|text| text.trim().parse().ok());
        return Err(LogError::Locked { dir: dir.to_path_buf(), holder });
    }
    // Ours now: say who holds it, for the next process that tries.
    file.set_len(0)
        .and_then(|_| (&file).write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(|e| LogError::io("write", &path, e))?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| LogError::io("fsync directory", dir, e))
}

fn read_file(path: &Path) -> Result<Vec<u8>, LogError> {
    let mut buf = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(|e| LogError::io("read", path, e))?;
    Ok(buf)
}

fn remove(path: &Path) -> Result<(), LogError> {
    fs::remove_file(path).map_err(|e| LogError::io("delete", path, e))
}

/// Reads the directory, picks the snapshot, replays, cuts what must be
/// cut, and opens the segment to append to.
pub fn recover(dir: &Path, opts: &Options, stats: &Stats) -> Result<(Recovered, Active), LogError> {
    fs::create_dir_all(dir).map_err(|e| LogError::io("create", dir, e))?;
    let lock = lock_dir(dir)?;
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))? {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(seq) = parse_seq(&name, SEGMENT_PREFIX, SEGMENT_SUFFIX) {
            segments.push(seq);
        } else if let Some(seq) = parse_seq(&name, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX) {
            snapshots.push(seq);
        } else if name == SNAPSHOT_TMP {
            remove(&entry.path())?; // a snapshot that never got its name
        }
    }
    segments.sort_unstable();
    snapshots.sort_unstable();

    let snapshot = pick_snapshot(dir, &snapshots, &segments)?;
    let start = snapshot.as_ref().map_or(0, |s| s.next_segment);
    // Leftovers of a snapshot whose cleanup was cut short.
    for &seq in segments.iter().filter(|&&s| s < start) {
        remove(&segment_path(dir, seq))?;
    }
    for &seq in snapshots.iter().filter(|&&s| s < start) {
        remove(&snapshot_path(dir, seq))?;
    }
    let live: Vec<u64> = segments.into_iter().filter(|&s| s >= start).collect();
    for pair in live.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(LogError::MissingSegment { dir: dir.to_path_buf(), missing: pair[0] + 1 });
        }
    }
    if let (Some(&first), true) = (live.first(), start > 0) {
        if first != start {
            return Err(LogError::MissingSegment { dir: dir.to_path_buf(), missing: start });
        }
    }
    let paths: Vec<PathBuf> = live.iter().map(|&s| segment_path(dir, s)).collect();
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| read_file(p)).collect::<Result<_, _>>()?;
    let input: Vec<SegmentBytes<'_>> =
        paths.iter().zip(&bytes).map(|(path, bytes)| SegmentBytes { path, bytes }).collect();
    // The header's is the log's highest when the snapshot began; a record
    // read after may be newer.
    let last_snapshot_version =
        snapshot.as_ref().map_or(0, |s| s.records.iter().map(|r| r.update.version).fold(s.max_version, u64::max));
    let replayed = replay::replay(snapshot, &input, opts.truncate_corrupt)?;
    let mut recovered = replayed.recovered;
    let mut kept = live.len();
    let mut active_len = bytes.last().map_or(0, |b| b.len() as u64);
    if let Some(cut) = replayed.cut {
        let path = &paths[cut.segment];
        let dropped = bytes[cut.segment].len() as u64 - cut.offset;
        let later: u64 = bytes[cut.segment + 1..].iter().map(|b| b.len() as u64).sum();
        if cut.torn {
            log::warn!(
                "commit log {}: torn tail at offset {} ({}); cutting {dropped} bytes",
                path.display(),
                cut.offset,
                cut.reason
            );
        } else {
            log::error!(
                "commit log {}: corrupt at offset {} ({}); --log-truncate-corrupt: cutting {dropped} bytes \
                 and {} later segments ({later} bytes)",
                path.display(),
                cut.offset,
                cut.reason,
                live.len() - cut.segment - 1
            );
        }
        let file = OpenOptions::new().write(true).open(path).map_err(|e| LogError::io("open", path, e))?;
        file.set_len(cut.offset).and_then(|_| file.sync_all()).map_err(|e| LogError::io("truncate", path, e))?;
        for p in &paths[cut.segment + 1..] {
            remove(p)?;
        }
        sync_dir(dir)?;
        kept = cut.segment + 1;
        active_len = cut.offset;
        recovered.truncated_tail = Some((path.clone(), cut.offset));
    }
    let total: u64 = bytes[..kept.saturating_sub(1)].iter().map(|b| b.len() as u64).sum::<u64>() + active_len;
    let active = match live.get(kept.wrapping_sub(1)).filter(|_| kept > 0) {
        Some(&seq) => {
            let path = segment_path(dir, seq);
            let file = OpenOptions::new().append(true).open(&path).map_err(|e| LogError::io("open", &path, e))?;
            Active { file, seq, len: active_len, _lock: lock }
        }
        None => {
            let seq = start.max(1);
            let file = create_segment(dir, seq)?;
            Active { file, seq, len: 0, _lock: lock }
        }
    };
    stats.log_bytes.store(total, Ordering::Relaxed);
    stats.segments.store(kept.max(1) as u64, Ordering::Relaxed);
    stats.bytes_since_snapshot.store(total, Ordering::Relaxed);
    stats.last_snapshot_version.store(last_snapshot_version, Ordering::Relaxed);
    Ok((recovered, active))
}

/// The newest snapshot that decodes. A bad one is passed over only for an
/// older good one whose segments all still exist; else it stops the start.
fn pick_snapshot(dir: &Path, snapshots: &[u64], segments: &[u64]) -> Result<Option<SnapshotContent>, LogError> {
    let mut bad: Option<LogError> = None;
    for &seq in snapshots.iter().rev() {
        let path = snapshot_path(dir, seq);
        match replay::decode_snapshot(&read_file(&path)?) {
            Ok(content) => {
                // Under a bad newer snapshot, an older one serves only if the
                // segments it needs were not deleted yet.
                if bad.is_none() || segments.first() == Some(&content.next_segment) {
                    if bad.is_some() {
                        log::warn!("using the older snapshot {}", path.display());
                    }
                    return Ok(Some(content));
                }
                break;
            }
            Err((offset, reason)) => {
                log::error!("snapshot {} is bad at offset {offset}: {reason}", path.display());
                bad.get_or_insert(LogError::BadSnapshot { file: path, offset: offset as u64, reason });
            }
        }
    }
    match bad {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

fn create_segment(dir: &Path, seq: u64) -> Result<File, LogError> {
    let path = segment_path(dir, seq);
    let file =
        OpenOptions::new().create_new(true).append(true).open(&path).map_err(|e| LogError::io("create", &path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes `snap` as the snapshot covering segments below `next_segment`,
/// then deletes them. Returns the snapshot's highest version.
pub fn write_snapshot(
    dir: &Path,
    next_segment: u64,
    max_version: u64,
    max_epoch: u64,
    snap: Snapshot,
    stats: &Stats,
) -> Result<u64, LogError> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let file = File::create(&tmp).map_err(|e| LogError::io("create", &tmp, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(64 << 10);
    let flush = |buf: &mut Vec<u8>, out: &mut std::io::BufWriter<File>| -> Result<(), LogError> {
        out.write_all(buf).map_err(|e| LogError::io("write", &tmp, e))?;
        buf.clear();
        Ok(())
    };
    codec::encode(&Entry::SnapshotHeader { next_segment, max_version, max_epoch }, &mut buf);
    if let Some(p) = snap.position {
        codec::encode(&Entry::Position(p), &mut buf);
    }
    // The header has the log's highest version; a record read later may
    // be newer (committed since): replay takes each record's own too.
    let mut max_version = max_version;
    let mut records = 0u64;
    for batch in snap.records.0 {
        for r in batch {
            max_version = max_version.max(r.update.version);
            records += 1;
            codec::encode(&Entry::Write(r), &mut buf);
            if buf.len() >= 60 << 10 {
                flush(&mut buf, &mut out)?;
            }
        }
    }
    // After the records: see `After`.
    let after = (snap.after.0)().map_err(LogError::Abandoned)?;
    for &(id, v, slot) in &after.write_ids {
        codec::encode(&Entry::WriteOutcome(id, v, slot), &mut buf);
    }
    for &slot in &after.frozen {
        codec::encode(&Entry::Slot(slot, codec::SlotChange::Freeze), &mut buf);
    }
    let write_ids = after.write_ids.len() as u64;
    codec::encode(&Entry::SnapshotEnd { records, write_ids }, &mut buf);
    flush(&mut buf, &mut out)?;
    let file = out.into_inner().map_err(|e| LogError::io("write", &tmp, e.into_error()))?;
    file.sync_all().map_err(|e| LogError::io("fsync", &tmp, e))?;
    drop(file);
    let path = snapshot_path(dir, next_segment);
    fs::rename(&tmp, &path).map_err(|e| LogError::io("rename", &tmp, e))?;
    sync_dir(dir)?;
    // The snapshot stands: what it covers can go.
    for entry in fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))? {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if parse_seq(&name, SEGMENT_PREFIX, SEGMENT_SUFFIX).is_some_and(|s| s < next_segment) {
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            remove(&entry.path())?;
            stats.log_bytes.fetch_sub(len.min(stats.log_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
            stats.segments.fetch_sub(1, Ordering::Relaxed);
            log::debug!("deleted {name} (covered by snapshot {next_segment})");
        } else if parse_seq(&name, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX).is_some_and(|s| s < next_segment) {
            remove(&entry.path())?;
        }
    }
    sync_dir(dir)?;
    stats.last_snapshot_version.store(max_version, Ordering::Relaxed);
    stats.snapshots.fetch_add(1, Ordering::Relaxed);
    if records == 0 && write_ids == 0 {
        // A standby starting over, or a root that holds nothing: every
        // record from here on is in the log after it.
        log::info!("empty snapshot {} written: the log starts afresh after it", path.display());
    } else {
        log::info!(
            "snapshot {} written: {records} records, {write_ids} write ids, up to version {max_version}",
            path.display()
        );
    }
    Ok(max_version)
}

/// Sends the writer a tick every second until the log is dropped.
pub fn tick(tx: mpsc::WeakSender<Msg>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(tx) = tx.upgrade() else { return };
        // Full: the writer is busy and checks the clock after each batch.
        let _ = tx.try_send(Msg::Tick);
    }
}

/// Stops the process: the log can no longer promise what it promised.
fn fatal(what: &str, path: &Path, e: std::io::Error) -> ! {
    let msg = format!(
        "FATAL: commit log {what} {} failed: {e}; stopping the root (an fsync error is never retried: \
         the kernel may have dropped the unwritten pages)",
        path.display()
    );
    log::error!("{msg}");
    eprintln!("treecache: {msg}");
    std::process::exit(70);
}

/// The thread that owns the active segment.
pub struct Writer {
    active: Active,
    dir: PathBuf,
    fsync: Fsync,
    segment_bytes: u64,
    fault_fsync_error: bool,
    stats: Arc<Stats>,
    /// Bytes written since the last fsync (0: nothing to sync).
    unsynced_records: u64,
    dirty: bool,
    last_sync: Instant,
}

impl Writer {
    pub fn new(active: Active, dir: &Path, fsync: Fsync, opts: &Options, stats: Arc<Stats>) -> Writer {
        Writer {
            active,
            dir: dir.to_path_buf(),
            fsync,
            segment_bytes: opts.segment_bytes.max(4096),
            fault_fsync_error: opts.fault_fsync_error,
            stats,
            unsynced_records: 0,
            dirty: false,
            last_sync: Instant::now(),
        }
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut waiters = Vec::new();
        let mut rotations = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut records = 0;
            let mut force_sync = false;
            let mut msg = first;
            loop {
                match msg {
                    Msg::Append { frames, records: n, sync, done } => {
                        buf.extend_from_slice(&frames);
                        records += n;
                        force_sync |= sync;
                        waiters.push(done);
                    }
                    Msg::Rotate { done } => rotations.push(done),
                    Msg::Tick => {}
                }
                if buf.len() >= MAX_BATCH {
                    break;
                }
                match rx.try_recv() {
                    Ok(next) => msg = next,
                    Err(_) => break,
                }
            }
            if !buf.is_empty() {
                self.write(&buf);
                buf.clear();
            }
            self.unsynced_records += records;
            self.stats.records.fetch_add(records, Ordering::Relaxed);
            let due = match self.fsync {
                Fsync::Always => true,
                Fsync::Everysec => self.last_sync.elapsed() >= Duration::from_secs(1),
                Fsync::Never => false,
            };
            if force_sync || due || !rotations.is_empty() {
                self.sync();
            }
            for done in waiters.drain(..) {
                let _ = done.send(());
            }
            if !rotations.is_empty() || self.active.len >= self.segment_bytes {
                let seq = self.rotate();
                for done in rotations.drain(..) {
                    let _ = done.send(seq);
                }
            }
        }
        // Every handle is gone: leave nothing unsynced behind.
        self.sync();
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.active.seq)
    }

    fn write(&mut self, buf: &[u8]) {
        if let Err(e) = self.active.file.write_all(buf) {
            fatal("write to", &self.path(), e);
        }
        self.active.len += buf.len() as u64;
        self.dirty = true;
        self.stats.log_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.stats.bytes_since_snapshot.fetch_add(buf.len() as u64, Ordering::Relaxed);
    }

    fn sync(&mut self) {
        self.last_sync = Instant::now();
        if !self.dirty {
            return;
        }
        let started = Instant::now();
        let result = if self.fault_fsync_error {
            Err(std::io::Error::other("injected by --fault-fsync-error"))
        } else {
            self.active.file.sync_data()
        };
        if let Err(e) = result {
            fatal("fsync of", &self.path(), e);
        }
        self.stats.fsync_seconds.observe(started.elapsed());
        self.stats.records_synced.fetch_add(self.unsynced_records, Ordering::Relaxed);
        self.unsynced_records = 0;
        self.dirty = false;
    }

    /// Syncs the active segment and begins the next; returns its number.
    fn rotate(&mut self) -> u64 {
        self.sync();
        let seq = self.active.seq + 1;
        match create_segment(&self.dir, seq) {
            Ok(file) => {
                self.active.file = file;
                self.active.seq = seq;
                self.active.len = 0;
                self.stats.segments.fetch_add(1, Ordering::Relaxed);
                seq
            }
            Err(LogError::Io { source, .. }) => fatal("create of", &segment_path(&self.dir, seq), source),
            Err(e) => fatal("create of", &segment_path(&self.dir, seq), std::io::Error::other(e.to_string())),
        }
    }
}
