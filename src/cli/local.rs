//! Running node processes on loopback: shared by `treecache up` and the
//! test harness, so both start nodes the same way.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `bin node ...` with its output appended to `log`.
pub fn spawn_node(bin: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    Command::new(bin)
        .arg("node")
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,zookeeper_client=warn,actix_server=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

/// Polls `url/health` until it answers 200, and returns its JSON.
pub async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    child: Option<&mut Child>,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + timeout;
    let mut child = child;
    loop {
        if let Ok(resp) = http.get(format!("{url}/health")).timeout(Duration::from_secs(2)).send().await {
            if resp.status().is_success() {
                return resp.json().await.map_err(|e| e.to_string());
            }
        }
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("{url} exited with {status} before it was healthy"));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{url} not healthy within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM, waits up to `grace`, then kills.
pub fn stop(child: &mut Child, grace: Duration) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
