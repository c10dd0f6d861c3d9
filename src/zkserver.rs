//! A private ZooKeeper from Debian's `zookeeper` package, for tests and
//! `treecache up`: its own temp dir, a free loopback port, the admin server
//! off. Java runs directly (standalone server main class, the package's
//! classpath) in its own process group, so stopping it kills the JVM and
//! not just a wrapper script.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";
const MAIN: &str = "org.apache.zookeeper.server.ZooKeeperServerMain";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running private ZooKeeper; dropped, it is killed and reaped.
pub struct LocalZk {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl LocalZk {
    /// Starts a server on a free port and waits until a session opens.
    pub async fn start() -> Result<LocalZk, String> {
        if !Path::new("/usr/share/java/zookeeper.jar").exists() {
            return Err("ZooKeeper is not installed (/usr/share/java/zookeeper.jar missing): \
                        run provision/install-zookeeper.sh"
                .into());
        }
        let dir = tempfile::Builder::new().prefix("treecache-zk-").tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut zk = LocalZk { dir, port: 0, child: None };
        let mut last = String::new();
        for _ in 0..5 {
            zk.port = free_port()?;
            match zk.launch().await {
                Ok(()) => return Ok(zk),
                Err(e) => last = e,
            }
        }
        Err(format!("ZooKeeper did not start: {last}"))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("zookeeper.log")
    }

    /// Stops the server (an outage); `restart` brings it back on the same
    /// port with the same data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The JVM leads its own process group: kill the group.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), String> {
        let cfg = self.dir.path().join("zoo.cfg");
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let conf = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=*\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n",
            data.display(),
            self.port
        );
        std::fs::write(&cfg, conf).map_err(|e| format!("{}: {e}", cfg.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("zookeeper log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("java")
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-Dzookeeper.root.logger=INFO,CONSOLE", "-cp", CLASSPATH, MAIN])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run java: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("java exited with {status}: {}", self.log_tail()));
                }
            }
            if let Ok(Ok(_client)) =
                tokio::time::timeout(Duration::from_secs(2), zookeeper_client::Client::connect(&self.addr())).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("no session within {START_TIMEOUT:?}: {}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LocalZk {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
