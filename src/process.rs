//! Process plumbing shared by everything that runs child processes or is
//! one: the private ZooKeeper ([`crate::zkserver`]), `treecache up`, the
//! bench and the test harness ([`crate::cli::local`]), and a serving node
//! ([`crate::server`]). Knows nothing of what the processes are.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Opens `log` for appending, twice: one handle for stdout, one for stderr.
pub fn open_log(log: &Path) -> Result<(std::fs::File, std::fs::File), String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
    Ok((out, err))
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it
/// exits, so an interrupted test run or a killed `up` leaves no orphans.
/// Spawn from a long-lived thread (a runtime's `block_on` thread or worker),
/// never from a `spawn_blocking` thread, which exits when idle.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec; prctl is
    // async-signal-safe and the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The last `lines` lines of a log file; a note instead when it is unreadable.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines_and_explains_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "b\nc");
        assert_eq!(log_tail(&log, 10), "a\nb\nc");
        assert!(log_tail(&dir.path().join("missing"), 2).starts_with("(cannot read "));
    }
}
