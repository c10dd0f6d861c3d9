//! The root's side of its commit log ([`crate::log`]): rebuilding the
//! store from what a start recovered, and snapshots taken from the store.
//! The write path appends (`write.rs`, `make_durable`); this file owns the
//! rest of the node's dealings with the log.

use std::sync::atomic::Ordering;

use super::Node;
use crate::clock::Time;
use crate::log::{After, CommitLog, Later, Record, Records, Recovered, Snapshot};

impl Node {
    /// The commit log, at a root started with `--data-dir`.
    pub fn log(&self) -> Option<&CommitLog> {
        self.inner.log.as_ref()
    }

    /// Rebuilds the store from recovered records (each applied if newer,
    /// so order between keys and repeats do not matter), continues the
    /// version sequence, and makes the next election's epoch exceed every
    /// epoch on disk.
    pub(super) fn restore(&self, recovered: &Recovered) {
        let started = std::time::Instant::now();
        let now = Time::now();
        for r in &recovered.records {
            self.inner.store.apply(&r.update, now);
        }
        // The root's dedupe memory: a write id retried after the restart
        // learns its outcome instead of committing twice.
        for &(id, version, slot) in &recovered.write_ids {
            self.restore_write_outcome(id, version, slot);
        }
        self.restore_frozen(&recovered.frozen);
        self.inner.versions.fetch_max(recovered.max_version, Ordering::AcqRel);
        self.inner.epoch.fetch_max(recovered.max_epoch, Ordering::AcqRel);
        self.restore_position(recovered.position, recovered.max_version);
        if let Some(p) = recovered.position {
            log::info!("a standby's log: it holds the stream of epoch {}'s leader up to {}", p.epoch, p.seq);
        }
        log::info!(
            "commit log {}: replayed {} records ({} keys) in {:?}, versions continue above {}, epoch above {}",
            self.log().map_or_else(String::new, |l| l.dir().display().to_string()),
            recovered.records.len(),
            self.inner.store.len(),
            started.elapsed(),
            recovered.max_version,
            recovered.max_epoch
        );
    }

    /// Starts a snapshot in the background when the log has grown enough.
    pub(super) fn maybe_snapshot(&self, log: &CommitLog) {
        if !log.wants_snapshot() {
            return;
        }
        let (node, log) = (self.clone(), log.clone());
        self.spawn(async move {
            match log.snapshot(move || node.snapshot_source()).await {
                Ok(_) => {}
                // The log goes on without it; the next append asks again.
                Err(e @ crate::log::LogError::Abandoned(_)) => log::info!("{e}; the next append asks again"),
                Err(e) => log::error!("snapshot failed: {e}"),
            }
        });
    }

    /// The store as snapshot records (and a standby's stream position):
    /// every entry, tombstones and expired ones included (a tombstone must
    /// keep beating an older put that the log after the snapshot may still
    /// hold). Read a shard at a time as the snapshot is written, so writes
    /// wait at most for one shard's read lock, and the snapshot holds the
    /// copies of one shard's values at a time (a value is copied out of
    /// its entry: [`crate::store`]), not of the whole store.
    pub(super) fn snapshot_source(&self) -> Snapshot {
        let epoch = self.epoch();
        // Before the store is read: it holds everything up to it.
        let position = self.held_position();
        let starts = self.starts_over();
        let node = self.clone();
        let shards = (0..self.inner.store.shard_count()).map(move |index| {
            let record = |e: crate::store::DumpEntry| Record {
                epoch,
                update: crate::store::Update {
                    key: e.key,
                    version: e.version,
                    value: e.value,
                    expires_at: e.expires_at,
                },
                write_id: None,
            };
            node.inner.store.shard_entries(index).into_iter().map(record).collect()
        });
        // Outcomes after the records (see `After`); and a standby that
        // started over meanwhile wiped the store under the snapshot, which
        // is then part old store, part nothing: abandoned (its start-over
        // writes an empty one next).
        let node = self.clone();
        let after = move || {
            if node.starts_over() != starts {
                return Err("the standby started over (wiped its store) while the snapshot read it".to_string());
            }
            Ok(After { write_ids: node.write_outcomes(None), frozen: node.frozen_slots() })
        };
        Snapshot { records: Records(Box::new(shards)), after: Later(Box::new(after)), position }
    }

    /// Opens the log for a root started with `--data-dir` (blocking, before
    /// serving): the recovered state goes into the store.
    pub fn open_log(args: &crate::config::NodeArgs) -> Result<Option<(CommitLog, Recovered)>, String> {
        let Some(dir) = &args.data_dir else { return Ok(None) };
        if !args.root {
            log::info!(
                "--data-dir {} ignored: only a root keeps a commit log; this node is a cache and starts empty",
                dir.display()
            );
            return Ok(None);
        }
        let opts = crate::log::Options {
            segment_bytes: args.log_segment_bytes,
            snapshot_bytes: args.snapshot_bytes,
            truncate_corrupt: args.log_truncate_corrupt,
            fault_fsync_error: args.fault_fsync_error,
        };
        let started = std::time::Instant::now();
        let (log, recovered) = CommitLog::open(dir, args.fsync, opts).map_err(|e| e.to_string())?;
        // A cut (torn tail, or corruption under --log-truncate-corrupt) was
        // logged by the log itself, which knows which of the two it was.
        log::info!("commit log {} opened in {:?}", dir.display(), started.elapsed());
        Ok(Some((log, recovered)))
    }
}
