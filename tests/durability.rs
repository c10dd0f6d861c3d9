//! The root's commit log against real processes (DESIGN.md guarantee 3 and
//! "Root restart"): kill -9 the root, start it again with the same flags,
//! and every acknowledged write is back with versions that go on rising;
//! torn tails are cut, corruption in the middle stops the start naming the
//! file, and `--log-truncate-corrupt` cuts there on the operator's word.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Cluster, Opts};
use parking_lot::Mutex;

async fn durable_root(args: &[&str]) -> Cluster {
    let root_args = args.iter().map(|s| s.to_string()).collect();
    Cluster::start_opts(Opts { durable_root: true, root_args, ..Opts::default() }).await
}

/// PUT ack=root; the version the root acknowledged.
async fn put_root(c: &Cluster, key: &str, value: &str) -> u64 {
    let (status, body) = c.put(0, key, value, "?ack=root").await;
    assert!(status == 200 || status == 201, "PUT {key}: {status} {body}");
    body["version"].as_u64().expect("version in the answer")
}

/// What the root serves for `key`: (version, value), or None when absent.
async fn read_root(c: &Cluster, key: &str) -> Option<(u64, String)> {
    let r = c.get(0, key, "").await;
    (r.status == 200).then(|| (r.version.expect("X-Version"), r.text()))
}

/// The log's segment files, oldest first.
fn segments(c: &Cluster) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(c.root_data_dir())
        .expect("the root's data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(treecache::log::SEGMENT_PREFIX)))
        .collect();
    segs.sort();
    segs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_versions_go_on() {
    let mut c = durable_root(&["--fsync", "always"]).await;
    let epoch_before = c.health(0).await["epoch"].as_u64().unwrap();
    let mut acked = HashMap::new();
    for i in 0..200 {
        let key = format!("key-{i}");
        acked.insert(key.clone(), put_root(&c, &key, &format!("value {i}")).await);
    }
    // A delete and an overwrite must come back as such.
    assert_eq!(c.del(0, "key-7", "?ack=root").await.0, 200);
    acked.remove("key-7");
    acked.insert("key-8".into(), put_root(&c, "key-8", "rewritten").await);
    let highest = *acked.values().max().unwrap();

    c.kill(0);
    c.restart(0).await;

    for (key, version) in &acked {
        let (v, value) = read_root(&c, key).await.unwrap_or_else(|| panic!("{key} lost"));
        assert_eq!(v, *version, "{key}");
        let want = if key == "key-8" { "rewritten".to_string() } else { format!("value {}", &key[4..]) };
        assert_eq!(value, want, "{key}");
    }
    assert_eq!(read_root(&c, "key-7").await, None, "a delete stays deleted");
    assert!(put_root(&c, "after", "x").await > highest, "versions continue above the log's");
    assert!(c.health(0).await["epoch"].as_u64().unwrap() > epoch_before, "the epoch rises");
    assert!(c.metric(0, "log_fsyncs_total").await >= 1.0);
    assert!(c.metric(0, "log_bytes").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_acknowledged_before_kill_9_in_a_storm_is_back() {
    let mut c = durable_root(&["--fsync", "always"]).await;
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let url = c.url(0);
    let mut clients = Vec::new();
    for client in 0..8 {
        let (acked, url) = (acked.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0.. {
                let key = format!("storm-{client}-{n}");
                let sent = http.put(format!("{url}/kv/{key}?ack=root")).body(format!("v{n}")).send().await;
                let Ok(resp) = sent else { return };
                if !resp.status().is_success() {
                    return;
                }
                let Ok(body) = resp.json::<serde_json::Value>().await else { return };
                match body["version"].as_u64() {
                    Some(v) => acked.lock().push((key, v)),
                    None => return,
                }
            }
        }));
    }
    wait_until(Duration::from_secs(30), "400 acknowledged writes", || async { acked.lock().len() >= 400 }).await;
    c.kill(0);
    for client in clients {
        client.await.expect("client task");
    }
    let acked = acked.lock().clone();
    c.restart(0).await;
    let fsyncs_per_write = c.metric(0, "log_records_per_fsync").await;
    for (key, version) in &acked {
        let got = read_root(&c, key).await;
        assert_eq!(got.as_ref().map(|g| g.0), Some(*version), "{key} acknowledged at {version}, now {got:?}");
    }
    eprintln!("{} acknowledged writes all back ({fsyncs_per_write} records per fsync since restart)", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tails_are_cut_and_the_root_starts() {
    let mut c = durable_root(&["--fsync", "always"]).await;
    for i in 0..20 {
        put_root(&c, &format!("k{i}"), "0123456789").await;
    }
    c.kill(0);
    // Killed mid-append: the last record's end never reached the disk.
    let seg = segments(&c).pop().expect("a segment");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
    c.restart(0).await;
    let log = c.log_text(0);
    assert!(log.contains("torn tail") && log.contains(&seg.display().to_string()), "{log}");
    for i in 0..19 {
        assert!(read_root(&c, &format!("k{i}")).await.is_some(), "k{i}");
    }
    assert_eq!(read_root(&c, "k19").await, None, "the torn last record is cut");

    // A flipped bit in the last record: its checksum fails, nothing follows.
    put_root(&c, "last", "0123456789").await;
    c.kill(0);
    let seg = segments(&c).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 12] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    c.restart(0).await;
    assert!(c.log_text(0).matches("torn tail").count() >= 2);
    assert_eq!(read_root(&c, "last").await, None, "the damaged last record is cut");
    assert!(read_root(&c, "k18").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_middle_stops_the_start_until_the_operator_cuts() {
    let mut c = durable_root(&["--fsync", "always"]).await;
    for i in 0..30 {
        put_root(&c, &format!("k{i}"), "a value of some length").await;
    }
    c.kill(0);
    let seg = segments(&c).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let (code, log) = c.restart_expect_exit(0).await;
    assert_eq!(code, Some(1), "{log}");
    let refusal = log.lines().find(|l| l.contains("is corrupt at offset")).unwrap_or_else(|| panic!("{log}"));
    assert!(refusal.contains(&seg.display().to_string()) && refusal.contains("--log-truncate-corrupt"), "{refusal}");

    c.push_args(0, &["--log-truncate-corrupt"]);
    c.restart(0).await;
    let log = c.log_text(0);
    assert!(log.contains("--log-truncate-corrupt: cutting"), "{log}");
    assert!(!log.contains("cut a torn tail"), "the cut is corruption, not a torn tail: {log}");
    assert!(read_root(&c, "k0").await.is_some(), "what precedes the damage is kept");
    assert_eq!(read_root(&c, "k29").await, None, "what follows it is cut");
    // The log goes on after the cut, and a further restart is clean.
    let v = put_root(&c, "after", "x").await;
    c.kill(0);
    c.restart(0).await;
    assert_eq!(read_root(&c, "after").await.map(|r| r.0), Some(v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_replace_segments_and_a_restart_reads_snapshot_then_log() {
    let args = ["--fsync", "everysec", "--snapshot-bytes", "16KiB", "--log-segment-bytes", "4KiB"];
    let mut c = durable_root(&args).await;
    let value = "v".repeat(100);
    let mut acked = HashMap::new();
    for i in 0..300 {
        let key = format!("k{}", i % 120);
        acked.insert(key.clone(), put_root(&c, &key, &format!("{i}{value}")).await);
    }
    wait_until(Duration::from_secs(20), "a snapshot", || async { c.metric(0, "log_snapshots_total").await >= 1.0 })
        .await;
    assert!(c.metric(0, "log_last_snapshot_version").await > 0.0);
    // Segments the snapshot covers were deleted: far fewer than 300 x 150 B / 4 KiB.
    assert!(segments(&c).len() < 8, "{:?}", segments(&c));
    for i in 0..10 {
        let key = format!("after-{i}");
        acked.insert(key.clone(), put_root(&c, &key, "x").await);
    }
    c.kill(0);
    c.restart(0).await;
    for (key, version) in &acked {
        assert_eq!(read_root(&c, key).await.map(|r| r.0), Some(*version), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_error_stops_the_root_and_caches_ignore_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache").display().to_string();
    let mut c = Cluster::start_opts(Opts {
        nodes: 2,
        durable_root: true,
        node_args: vec!["--data-dir".into(), cache_dir.clone(), "--fsync".into(), "never".into()],
        ..Opts::default()
    })
    .await;
    let line = format!("--data-dir {cache_dir} ignored");
    assert!(c.log_text(1).contains(&line), "{}", c.log_text(1));
    assert!(!dir.path().join("cache").exists(), "a cache writes nothing there");
    let fsync = "--fsync never ignored: only a root keeps a commit log; this node is a cache";
    assert!(c.log_text(1).contains(fsync), "{}", c.log_text(1));

    // The root's first fsync (the epoch record at election) fails: it exits.
    c.push_args(0, &["--fault-fsync-error"]);
    let (code, log) = c.restart_expect_exit(0).await;
    assert_eq!(code, Some(70), "{log}");
    assert!(log.contains("FATAL: commit log fsync of") && log.contains("never retried"), "{log}");
}

#[test]
fn a_data_dir_that_cannot_be_made_refuses_the_start() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let dir = file.path().join("log");
    let out = common::output_within(
        std::process::Command::new(common::BIN)
            .args(["node", "--zk", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--cluster-secret", "0123456789abcdef"])
            .args(["--root", "--data-dir"])
            .arg(&dir),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("commit log create") && err.contains(&dir.display().to_string()), "{err}");
}

#[test]
fn with_json_logs_the_refusal_to_start_is_a_json_line_too() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let dir = file.path().join("log");
    let out = common::output_within(
        std::process::Command::new(common::BIN)
            .args(["node", "--zk", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--cluster-secret", "0123456789abcdef"])
            .args(["--log-format", "json", "--root", "--data-dir"])
            .arg(&dir),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_else(|| panic!("nothing on stderr"));
    let line: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last:?}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(line["msg"].as_str().is_some_and(|m| m.contains("commit log create")), "{line}");
    assert!(err.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "only JSON lines: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_of_an_absent_key_is_decided_once_across_a_root_restart() {
    // The root decides a delete of an absent key, and its answer is lost
    // (--fault-lose-write-replies 1). Before the node's resend arrives
    // (its uplink holds each batch 8 s), the root is killed and started
    // again, and the key is written at the root. The resend must find the
    // delete decided (its outcome is in the log), not delete the new value.
    let mut c = Cluster::start_opts(Opts {
        nodes: 1,
        durable_root: true,
        root_args: vec!["--fault-lose-write-replies".into(), "1".into()],
        ..Opts::default()
    })
    .await;
    let w = c.add_node_with(&["--fault-uplink-delay-ms", "8000"]).await;
    let url = format!("{}/kv/gone?ack=root", c.url(w));
    let http = c.http.clone();
    // Its answer is lost with the root: only the key's state matters.
    let delete = tokio::spawn(async move { http.delete(url).send().await.map(|r| r.status().as_u16()) });
    wait_until(Duration::from_secs(30), "the root to decide the delete and lose its answer", || async {
        c.log_text(w).contains("this write answer is lost")
    })
    .await;
    c.restart(0).await;
    let version = put_root(&c, "gone", "written after the delete").await;
    wait_until(Duration::from_secs(60), "the node to resend the delete and hear its outcome", || async {
        c.metric(w, "uplink_unconfirmed").await == 0.0 && c.metric(w, "uplink_pending").await == 0.0
    })
    .await;
    let _ = delete.await;
    assert!(c.metric(0, "duplicate_writes_total").await >= 1.0, "the restarted root knew the resend");
    assert_eq!(
        read_root(&c, "gone").await,
        Some((version, "written after the delete".to_string())),
        "the resent delete was decided before the restart: it deletes nothing now"
    );
}
