//! A private ZooKeeper from Debian's `zookeeper` package, for tests,
//! `treecache up` and `bench`: its own temp dir, a free loopback port, the
//! admin server off, a short tick so sessions of a few seconds are allowed.
//!
//! Java runs directly (the standalone server's main class, the package's
//! jars), not through `zkServer.sh`: the JVM is the child we hold, it leads
//! its own process group, and it dies with the thread that started it, so
//! stopping it (or crashing the caller) never leaves a JVM behind.
//!
//! It owns the server process and its files; it never touches a system-wide
//! ZooKeeper.
//!
//! With [`LocalZk::start_tls`] the server also serves a secure client port
//! (`secureClientPort`, Netty, PEM key and trust stores, client
//! certificates required), for nodes started with `--zk-tls`. The plain
//! port stays, on loopback, for the local tools that read the tree
//! (`treecache up`, `treecache tree`, the tests' own checks).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{die_with_parent, log_tail, open_log};

const MAIN_CLASS: &str = "org.apache.zookeeper.server.ZooKeeperServerMain";
/// Where the package puts its config dir (log4j.properties) and jars; the
/// log4j binding is there so the server's log says why it failed.
const PACKAGE_CLASSPATH: [&str; 4] = [
    "/etc/zookeeper/conf",
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
];
/// The Netty jars the secure client port needs (Debian's libnetty-java, a
/// dependency of the zookeeper package).
const NETTY_CLASSPATH: [&str; 8] = [
    "/usr/share/java/netty-buffer.jar",
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-common.jar",
    "/usr/share/java/netty-handler.jar",
    "/usr/share/java/netty-resolver.jar",
    "/usr/share/java/netty-transport.jar",
    "/usr/share/java/netty-transport-native-epoll.jar",
    "/usr/share/java/netty-transport-native-unix-common.jar",
];
const PORT_ATTEMPTS: usize = 5;
const LOG_TAIL_LINES: usize = 30;
const POLL: Duration = Duration::from_millis(50);

/// How to launch the server. `Default` is the installed package; tests of
/// the failure paths point it elsewhere.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub java: PathBuf,
    pub classpath: Vec<PathBuf>,
    /// How long a start may take before it is called failed.
    pub start_timeout: Duration,
}

impl Default for Launcher {
    fn default() -> Self {
        Launcher {
            java: PathBuf::from("java"),
            classpath: PACKAGE_CLASSPATH.iter().map(PathBuf::from).collect(),
            start_timeout: Duration::from_secs(60),
        }
    }
}

impl Launcher {
    /// Every classpath entry must exist; otherwise the package is missing.
    fn check_installed(&self) -> Result<(), String> {
        match self.classpath.iter().find(|p| !p.exists()) {
            Some(missing) => Err(format!(
                "ZooKeeper is not installed ({} is missing): run provision/install-zookeeper.sh",
                missing.display()
            )),
            None => Ok(()),
        }
    }

    fn command(&self, dir: &Path, cfg: &Path) -> Command {
        let classpath: Vec<String> = self.classpath.iter().map(|p| p.display().to_string()).collect();
        let mut cmd = Command::new(&self.java);
        cmd.args(["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData"])
            .arg("-Dzookeeper.root.logger=INFO,CONSOLE")
            .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
            // Tests need no durability across machine crashes; page cache is enough.
            .arg("-Dzookeeper.forceSync=no")
            .arg("-cp")
            .arg(classpath.join(":"))
            .arg(MAIN_CLASS)
            .arg(cfg)
            .current_dir(dir)
            .stdin(Stdio::null())
            .process_group(0);
        die_with_parent(&mut cmd);
        cmd
    }
}

/// The secure client port's settings: its port and the PEM files.
#[derive(Debug, Clone)]
pub struct SecurePort {
    pub port: u16,
    /// The server's certificate and key, in one PEM file (ZooKeeper's PEM
    /// key store).
    pub keystore: PathBuf,
    /// The CA every client certificate must chain to.
    pub truststore: PathBuf,
}

/// The lines `zoo.cfg` needs for a secure client port on loopback:
/// Netty, PEM stores, client certificates required.
pub fn secure_config_text(secure: &SecurePort) -> String {
    format!(
        "secureClientPort={}\n\
         secureClientPortAddress=127.0.0.1\n\
         serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
         ssl.keyStore.location={}\n\
         ssl.keyStore.type=PEM\n\
         ssl.trustStore.location={}\n\
         ssl.trustStore.type=PEM\n\
         ssl.clientAuth=need\n",
        secure.port,
        secure.keystore.display(),
        secure.truststore.display()
    )
}

/// The server's `zoo.cfg`: standalone, loopback only, 500 ms ticks with
/// sessions from 1 s to 60 s, the admin server off, every four-letter word on.
pub fn config_text(data_dir: &Path, port: u16) -> String {
    format!(
        "tickTime=500\n\
         dataDir={}\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         minSessionTimeout=1000\n\
         maxSessionTimeout=60000\n\
         maxClientCnxns=0\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=*\n",
        data_dir.display()
    )
}

/// Why one launch did not give a serving ZooKeeper.
#[derive(Debug)]
enum LaunchError {
    /// Someone else holds the port: try another one.
    PortTaken,
    /// Anything else, with the log tail: give up.
    Failed(String),
}

/// A running private ZooKeeper; dropped, it is killed and reaped and its
/// directory removed.
pub struct LocalZk {
    dir: tempfile::TempDir,
    port: u16,
    launcher: Launcher,
    child: Option<Child>,
    /// The secure client port, when started with [`LocalZk::start_tls`].
    secure: Option<SecurePort>,
}

impl LocalZk {
    /// Starts the installed package on a free port (another one if that is
    /// taken meanwhile) and returns once a client session opens.
    pub async fn start() -> Result<LocalZk, String> {
        Self::start_with(Launcher::default()).await
    }

    /// [`LocalZk::start`] with another java, classpath or timeout.
    pub async fn start_with(launcher: Launcher) -> Result<LocalZk, String> {
        Self::start_inner(launcher, None).await
    }

    /// [`LocalZk::start`] plus a secure client port on loopback
    /// ([`LocalZk::secure_addr`]) with `tls`'s certificate, key and CA:
    /// clients must present a certificate from that CA. The certificate
    /// must name 127.0.0.1 (clients check it).
    pub async fn start_tls(tls: &crate::tls::TlsFiles) -> Result<LocalZk, String> {
        let mut launcher = Launcher::default();
        launcher.classpath.extend(NETTY_CLASSPATH.iter().map(PathBuf::from));
        Self::start_inner(launcher, Some(tls)).await
    }

    async fn start_inner(launcher: Launcher, tls: Option<&crate::tls::TlsFiles>) -> Result<LocalZk, String> {
        launcher.check_installed()?;
        let dir = tempfile::Builder::new()
            .prefix("treecache-zk-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir for ZooKeeper: {e}"))?;
        let secure = match tls {
            Some(tls) => Some(Self::stores(dir.path(), tls)?),
            None => None,
        };
        let mut zk = LocalZk { dir, port: 0, launcher, child: None, secure };
        for _ in 0..PORT_ATTEMPTS {
            zk.port = free_port()?;
            if let Some(secure) = zk.secure.as_mut() {
                secure.port = free_port()?;
            }
            match zk.launch().await {
                Ok(()) => return Ok(zk),
                Err(LaunchError::PortTaken) => log::info!("ZooKeeper port {} was taken, trying another", zk.port),
                Err(LaunchError::Failed(why)) => return Err(why),
            }
        }
        Err(format!("ZooKeeper did not start: {PORT_ATTEMPTS} ports in a row were taken"))
    }

    /// The key store (certificate then key, one PEM file) and trust store
    /// (the CA) of a secure client port, written into `dir`.
    fn stores(dir: &Path, tls: &crate::tls::TlsFiles) -> Result<SecurePort, String> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let keystore = dir.join("keystore.pem");
        let text = format!("{}\n{}", read(&tls.cert)?.trim_end(), read(&tls.key)?);
        crate::tls::certs::write_file(&keystore, &text, 0o600)?;
        let truststore = dir.join("truststore.pem");
        crate::tls::certs::write_file(&truststore, &read(&tls.ca)?, 0o644)?;
        Ok(SecurePort { port: 0, keystore, truststore })
    }

    /// `127.0.0.1:PORT`, the connect string (the plain port).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT` of the secure client port, when there is one.
    pub fn secure_addr(&self) -> Option<String> {
        self.secure.as_ref().map(|s| format!("127.0.0.1:{}", s.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory: `zoo.cfg`, `data/`, `zookeeper.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("zookeeper.log")
    }

    /// The last lines of the server's log (every start appends to it).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), LOG_TAIL_LINES)
    }

    /// The server's process id while it runs (for tests that pause it with
    /// SIGSTOP); `None` once stopped.
    pub fn pid(&mut self) -> Option<u32> {
        if self.is_running() {
            self.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (an outage for everyone connected) and reaps it.
    /// The port and data stay: [`LocalZk::start_again`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port with the same data.
    pub async fn start_again(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Err(format!("ZooKeeper at {} is already running", self.addr()));
        }
        match self.launch().await {
            Ok(()) => Ok(()),
            Err(LaunchError::PortTaken) => {
                Err(format!("cannot restart ZooKeeper: port {} is taken by another process", self.port))
            }
            Err(LaunchError::Failed(why)) => Err(why),
        }
    }

    /// [`LocalZk::stop`] then [`LocalZk::start_again`].
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.start_again().await
    }

    /// Writes the config, spawns the JVM and waits until it serves.
    async fn launch(&mut self) -> Result<(), LaunchError> {
        let cfg = self.write_config().map_err(LaunchError::Failed)?;
        let log_start = std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let (out, err) = open_log(&self.log_path()).map_err(LaunchError::Failed)?;
        let child = self
            .launcher
            .command(self.dir.path(), &cfg)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| LaunchError::Failed(format!("cannot run {}: {e}", self.launcher.java.display())))?;
        self.child = Some(child);
        let result = self.wait_serving(log_start).await;
        if result.is_err() {
            self.stop();
        }
        result
    }

    fn write_config(&self) -> Result<PathBuf, String> {
        let data = self.data_dir();
        std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        let cfg = self.dir.path().join("zoo.cfg");
        let mut text = config_text(&data, self.port);
        if let Some(secure) = &self.secure {
            text.push_str(&secure_config_text(secure));
        }
        std::fs::write(&cfg, text).map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
        Ok(cfg)
    }

    /// Polls until the server on our port is ours (its `conf` names our data
    /// dir) and a real client session opens; fails early when the JVM exits.
    async fn wait_serving(&mut self, log_start: u64) -> Result<(), LaunchError> {
        let timeout = self.launcher.start_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(self.exited(status, log_start));
            }
            match serving_data_dir(&self.addr()).await {
                Some(dir) if dir != self.data_dir() => return Err(LaunchError::PortTaken),
                Some(_) if client_connects(&self.addr()).await && self.secure_port_listens().await => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(LaunchError::Failed(format!(
                    "ZooKeeper at {} did not serve within {timeout:?}; log tail:\n{}",
                    self.addr(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// True without a secure port, else once it accepts connections.
    async fn secure_port_listens(&self) -> bool {
        match self.secure_addr() {
            Some(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
            None => true,
        }
    }

    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Classifies an early exit: a bind failure means the port was taken.
    fn exited(&mut self, status: std::process::ExitStatus, log_start: u64) -> LaunchError {
        self.child = None;
        let text = std::fs::read(self.log_path()).unwrap_or_default();
        let this_launch = String::from_utf8_lossy(text.get(log_start as usize..).unwrap_or_default());
        if this_launch.contains("Address already in use") {
            return LaunchError::PortTaken;
        }
        LaunchError::Failed(format!("ZooKeeper exited with {status} while starting; log tail:\n{}", self.log_tail()))
    }
}

impl Drop for LocalZk {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILLs the child's process group (the JVM leads its own), unless the
/// child was already reaped.
fn kill_group(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain syscall on a process group we created and whose
            // leader we have not reaped.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

/// Asks the server at `addr` for its config (`conf`, a four-letter word)
/// and returns its `dataDir`; `None` while nothing serves there yet.
async fn serving_data_dir(addr: &str) -> Option<PathBuf> {
    let ask = async {
        let mut sock = tokio::net::TcpStream::connect(addr).await.ok()?;
        sock.write_all(b"conf").await.ok()?;
        let mut answer = String::new();
        sock.read_to_string(&mut answer).await.ok()?;
        parse_data_dir(&answer)
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

/// The `dataDir=` line of a `conf` answer. ZooKeeper appends `version-2`.
pub fn parse_data_dir(conf: &str) -> Option<PathBuf> {
    let dir = conf.lines().find_map(|l| l.trim().strip_prefix("dataDir="))?;
    let dir = Path::new(dir);
    Some(if dir.ends_with("version-2") { dir.parent().unwrap_or(dir).to_path_buf() } else { dir.to_path_buf() })
}

/// True when a real client session opens within two seconds.
async fn client_connects(addr: &str) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(2), zookeeper_client::Client::connect(addr)).await, Ok(Ok(_)))
}

/// A loopback port free right now (the caller still has to win the race),
/// never one handed out before by this process. Drawn below the kernel's
/// ephemeral range when there is room: a port from `bind(0)` comes from
/// that range, where every outgoing connection (to ZooKeeper, to a parent)
/// also takes its local port, so a node started moments later on it could
/// find it taken ("Address already in use": one of 15 `bench scale` nodes
/// exited so, once).
pub fn free_port() -> Result<u16, String> {
    use rand::Rng;
    static GIVEN: parking_lot::Mutex<Vec<u16>> = parking_lot::Mutex::new(Vec::new());
    let low = ephemeral_low().unwrap_or(32768);
    let mut given = GIVEN.lock();
    let mut rng = rand::thread_rng();
    if low > 12_000 {
        for _ in 0..200 {
            let port = rng.gen_range(10_000..low);
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return Ok(port);
            }
        }
    }
    for _ in 0..50 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free loopback port: {e}"))?;
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    Err("no free loopback port: every one offered was handed out before".into())
}

/// The lowest port of the kernel's ephemeral range (Linux).
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A launcher whose "java" is this shell script.
    fn fake_java(dir: &Path, script: &str, timeout: Duration) -> Launcher {
        let java = dir.join("java");
        std::fs::write(&java, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&java, std::fs::Permissions::from_mode(0o755)).unwrap();
        Launcher { java, classpath: vec![dir.to_path_buf()], start_timeout: timeout }
    }

    /// Alive: the pid exists and is not a zombie waiting to be reaped.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit(')').next().map(|rest| rest.trim_start().chars().next()) != Some(Some('Z')))
            .unwrap_or(false)
    }

    #[test]
    fn config_is_standalone_on_loopback_with_short_sessions() {
        let cfg = config_text(Path::new("/tmp/zk/data"), 2999);
        for line in [
            "dataDir=/tmp/zk/data",
            "clientPort=2999",
            "clientPortAddress=127.0.0.1",
            "tickTime=500",
            "minSessionTimeout=1000",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
        ] {
            assert!(cfg.lines().any(|l| l == line), "{line} missing from\n{cfg}");
        }
    }

    #[test]
    fn data_dir_is_read_from_a_conf_answer() {
        let conf = "clientPort=2181\ndataDir=/tmp/treecache-zk-x/data/version-2\ndataLogDir=/tmp/x\n";
        assert_eq!(parse_data_dir(conf), Some(PathBuf::from("/tmp/treecache-zk-x/data")));
        assert_eq!(parse_data_dir("dataDir=/srv/zk\n"), Some(PathBuf::from("/srv/zk")));
        assert_eq!(parse_data_dir("This ZooKeeper instance is not currently serving requests\n"), None);
    }

    #[tokio::test]
    async fn a_missing_package_is_reported_with_the_fix() {
        let launcher = Launcher { classpath: vec![PathBuf::from("/nonexistent/zookeeper.jar")], ..Launcher::default() };
        let err = LocalZk::start_with(launcher).await.err().unwrap();
        assert!(err.contains("/nonexistent/zookeeper.jar is missing"), "{err}");
        assert!(err.contains("provision/install-zookeeper.sh"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_java_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Launcher {
            java: PathBuf::from("/nonexistent/java"),
            classpath: vec![dir.path().to_path_buf()],
            ..Launcher::default()
        };
        let err = LocalZk::start_with(launcher).await.err().unwrap();
        assert!(err.contains("cannot run /nonexistent/java"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = fake_java(dir.path(), "echo 'bad heap size' >&2; exit 3", Duration::from_secs(30));
        let err = LocalZk::start_with(launcher).await.err().unwrap();
        assert!(err.contains("exited with exit status: 3"), "{err}");
        assert!(err.contains("bad heap size"), "{err}");
    }

    #[tokio::test]
    async fn a_bind_failure_moves_to_another_port_then_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = fake_java(
            dir.path(),
            "echo 'java.net.BindException: Address already in use'; exit 1",
            Duration::from_secs(30),
        );
        let err = LocalZk::start_with(launcher).await.err().unwrap();
        assert!(err.contains("ports in a row were taken"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_serves_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // A wrapper that forks: the whole process group must die.
        let script = format!("sleep 600 & echo $! > {}; echo 'still starting'; wait", pid_file.display());
        let launcher = fake_java(dir.path(), &script, Duration::from_millis(500));
        let err = LocalZk::start_with(launcher).await.err().unwrap();
        assert!(err.contains("did not serve within 500ms"), "{err}");
        assert!(err.contains("still starting"), "{err}");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(Instant::now() < deadline, "the server's child {pid} outlived the failed start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
