//! Process plumbing shared by everything that runs child processes or is
//! one: the private ZooKeeper ([`crate::zkserver`]), `treecache up`, the
//! bench and the test harness ([`crate::cli::local`]), and a serving node
//! ([`crate::server`]); and what /proc says of a process (CPU time,
//! resident set), for a node's `/metrics` and the bench. Knows nothing of
//! what the processes are.

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

/// utime + stime in clock ticks, from the text of `/proc/<pid>/stat`:
/// fields 14 and 15, counted after the command's closing parenthesis (a
/// command may hold spaces and parentheses). `None` when the text is not
/// such a line.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // The fields after the command start at field 3 (state).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Clock ticks per second, the unit of [`cpu_ticks`] (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

/// A `Name:   1234 kB` line's number, in KiB (`/proc/<pid>/status`,
/// `smaps_rollup`); `name` includes the colon.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User and system CPU time this process has used, in seconds.
pub fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some(cpu_ticks(&stat)? as f64 / clock_ticks_per_second() as f64)
}

/// This process's resident set (`VmRSS`), in bytes.
pub fn own_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")?.checked_mul(1024)
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

    #[test]
    fn cpu_ticks_are_utime_plus_stime_counted_past_the_command() {
        // A command with a space and a parenthesis: fields are counted
        // from the last ')'.
        let stat = "4242 (tree cache) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 269 0 0 20 0 5 0 99 \
                    123456 789 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(cpu_ticks(stat), Some(1000));
        for bad in ["", "4242 (treecache S 1", "4242 (treecache) S 1 2 3", "4242 (t) S 1 2 3 4 5 6 7 8 9 10 x 5 0"] {
            assert_eq!(cpu_ticks(bad), None, "{bad:?}");
        }
        assert!(clock_ticks_per_second() > 0);
        assert!(own_cpu_seconds().is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn the_resident_set_is_read_from_vm_rss() {
        let status = "Name:\ttreecache\nVmPeak:\t  20000 kB\nVmRSS:\t    7312 kB\nThreads:\t5\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(7312));
        assert_eq!(kib_field("Name: x\n", "VmRSS:"), None);
        assert_eq!(kib_field("VmRSS:\t  lots kB\n", "VmRSS:"), None, "a number that is none");
        assert!(own_resident_bytes().is_some_and(|b| b > 0));
    }
}
