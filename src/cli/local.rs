//! Running node processes on loopback, shared by `treecache up`, `bench`
//! and the test harness (`tests/common`), so all of them start, watch and
//! stop nodes the same way. Owns process plumbing only: it knows the
//! `node` flags it passes, not what a node does with them.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{die_with_parent, open_log};

const POLL: Duration = Duration::from_millis(50);

/// The flags every local node needs: where ZooKeeper is, which cluster,
/// the loopback port to listen on, and the file holding the cluster secret.
pub fn node_args(zk: &str, cluster: &str, port: u16, secret_file: &Path) -> Vec<String> {
    vec![
        "--zk".into(),
        zk.into(),
        "--cluster".into(),
        cluster.into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--cluster-secret-file".into(),
        secret_file.display().to_string(),
    ]
}

/// Writes a new cluster secret (256 random bits as 64 hex digits) to
/// `path`, readable by its owner only, for `--cluster-secret-file`.
pub fn write_new_secret(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let secret: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create the cluster secret file {}: {e}", path.display()))?;
    io::Write::write_all(&mut file, format!("{secret}\n").as_bytes())
        .map_err(|e| format!("cannot write the cluster secret file {}: {e}", path.display()))
}

/// Starts `bin node ARGS..` with stdout and stderr appended to `log`, and
/// no `TREECACHE_*` variables from this process's environment. The
/// node leads its own process group (a Ctrl-C meant for the caller does not
/// reach it; the caller stops it) and is killed if the spawning thread dies
/// (see [`die_with_parent`]).
pub fn spawn_node(bin: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    spawn_node_env(bin, args, log, &[])
}

/// [`spawn_node`] with extra environment variables (`RUST_LOG` among them
/// overrides the caller's).
pub fn spawn_node_env(bin: &Path, args: &[String], log: &Path, env: &[(&str, &str)]) -> Result<Child, String> {
    let (out, err) = open_log(log)?;
    let mut cmd = Command::new(bin);
    // The flags say everything; a TREECACHE_* variable meant for the
    // caller (TREECACHE_ROOT, say) must not turn every node into a root.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("TREECACHE_")) {
            cmd.env_remove(name);
        }
    }
    cmd.arg("node")
        .args(args)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| crate::trace::DEFAULT_LOG_FILTER.into()))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    die_with_parent(&mut cmd);
    cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

/// Polls `url/health` every 50 ms until it answers 200 and returns its JSON.
/// Fails when `timeout` passes or when `child` (the node's process) exits.
pub async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    mut child: Option<&mut Child>,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe_health(http, url).await {
            Ok(health) => return Ok(health),
            Err(e) => e,
        };
        if let Some(status) = child.as_deref_mut().and_then(|c| c.try_wait().ok().flatten()) {
            return Err(format!("{url} exited with {status} before it was healthy"));
        }
        if Instant::now() > deadline {
            return Err(format!("{url} not healthy within {timeout:?} (last: {last})"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One GET /health: its JSON on 200; otherwise what came back instead, for
/// the timeout message.
async fn probe_health(http: &reqwest::Client, url: &str) -> Result<serde_json::Value, String> {
    let resp = http
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("GET {url}/health: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url}/health answered {status}"));
    }
    resp.json().await.map_err(|e| format!("GET {url}/health: bad JSON: {e}"))
}

/// Sends `signal` to the child if it has not been reaped yet (a reaped
/// child's pid may already belong to someone else).
fn signal(child: &mut Child, signal: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain syscall on a pid we own and have not reaped.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// Sends SIGTERM, waits up to `grace` for the process to leave, then kills
/// it. Always reaps.
pub fn stop(child: &mut Child, grace: Duration) {
    stop_all(std::slice::from_mut(child), grace);
}

/// [`stop`] for many processes at once: SIGTERM to all, one shared grace
/// period, then SIGKILL to whoever is left. Always reaps every child.
pub fn stop_all(children: &mut [Child], grace: Duration) {
    for child in children.iter_mut() {
        signal(child, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && children.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Opens a ZooKeeper session at `addr`, giving up after `timeout` (an
/// unreachable server fails fast instead of being retried forever).
pub async fn zk_connect(addr: &str, timeout: Duration) -> Result<zookeeper_client::Client, String> {
    let connecting = zookeeper_client::Client::connector().with_fail_eagerly().connect(addr);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot reach ZooKeeper at {addr}: {e}")),
        Err(_) => Err(format!("cannot reach ZooKeeper at {addr}: no session within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::log_tail;

    fn sh(script: &str) -> Child {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]).stdin(Stdio::null());
        die_with_parent(&mut cmd);
        cmd.spawn().unwrap()
    }

    #[test]
    fn node_args_name_zookeeper_cluster_and_listen_address() {
        assert_eq!(
            node_args("127.0.0.1:2181", "c1", 9000, Path::new("/s")).join(" "),
            "--zk 127.0.0.1:2181 --cluster c1 --listen 127.0.0.1:9000 --cluster-secret-file /s"
        );
    }

    #[test]
    fn new_secrets_are_private_random_and_never_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_new_secret(&a).unwrap();
        write_new_secret(&b).unwrap();
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_ne!(text, std::fs::read_to_string(&b).unwrap());
        assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_new_secret(&a).unwrap_err().contains("cannot create"));
    }

    #[test]
    fn spawn_node_reports_a_missing_binary() {
        let dir = tempfile::tempdir().unwrap();
        let err = spawn_node(Path::new("/nonexistent/treecache"), &[], &dir.path().join("log")).unwrap_err();
        assert!(err.contains("cannot start /nonexistent/treecache"), "{err}");
    }

    #[test]
    fn spawn_node_reports_an_unwritable_log() {
        let err = spawn_node(Path::new("/bin/true"), &[], Path::new("/nonexistent/dir/log")).unwrap_err();
        assert!(err.contains("cannot open log /nonexistent/dir/log"), "{err}");
    }

    #[test]
    fn spawn_node_sends_output_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // /bin/echo prints its arguments: "node --x".
        let mut child = spawn_node(Path::new("/bin/echo"), &["--x".into()], &log).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(log_tail(&log, 5), "node --x");
    }

    #[test]
    fn stop_kills_a_process_that_ignores_sigterm() {
        // The shell says so once its trap is set: a SIGTERM sent before
        // that would kill it at once and prove nothing.
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let mut child = sh(&format!("trap '' TERM; touch {}; while :; do sleep 1; done", ready.display()));
        let waiting = Instant::now();
        while !ready.exists() {
            assert!(waiting.elapsed() < Duration::from_secs(30), "the shell never set its trap");
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        stop(&mut child, Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_some(), "reaped");
        assert!(started.elapsed() >= Duration::from_millis(300), "waited the grace period first");
    }

    #[test]
    fn stop_all_returns_as_soon_as_everyone_left() {
        let mut children = vec![sh("exec sleep 600"), sh("exec sleep 600")];
        let started = Instant::now();
        stop_all(&mut children, Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(10));
        for child in children.iter_mut() {
            assert!(child.try_wait().unwrap().is_some());
        }
        // Stopping again (already reaped) is harmless.
        stop_all(&mut children, Duration::from_millis(10));
    }

    #[tokio::test]
    async fn wait_healthy_times_out_when_nothing_listens() {
        let port = crate::zkserver::free_port().unwrap();
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}");
        let err = wait_healthy(&http, &url, Duration::from_millis(200), None).await.unwrap_err();
        assert!(err.contains("not healthy within"), "{err}");
        assert!(err.contains("last: GET"), "{err}");
    }

    #[tokio::test]
    async fn wait_healthy_notices_the_process_exiting() {
        let port = crate::zkserver::free_port().unwrap();
        let http = reqwest::Client::new();
        let mut child = sh("exit 3");
        let url = format!("http://127.0.0.1:{port}");
        let err = wait_healthy(&http, &url, Duration::from_secs(30), Some(&mut child)).await.unwrap_err();
        assert!(err.contains("exited with exit status: 3"), "{err}");
    }

    #[tokio::test]
    async fn wait_healthy_reports_a_non_200_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let http = reqwest::Client::new();
        let err = wait_healthy(&http, &url, Duration::from_millis(300), None).await.unwrap_err();
        assert!(err.contains("answered 503"), "{err}");
    }

    #[tokio::test]
    async fn zk_connect_fails_fast_when_nothing_listens() {
        let port = crate::zkserver::free_port().unwrap();
        let started = Instant::now();
        let err = zk_connect(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await.unwrap_err();
        assert!(err.contains(&format!("cannot reach ZooKeeper at 127.0.0.1:{port}")), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
