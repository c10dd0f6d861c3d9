//! `treecache up` and `treecache tree`, run as a person runs them: the real
//! binary, a real ZooKeeper, real node processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Zk, BIN};
use rustls::pki_types::pem::PemObject;
use treecache::cli::tree::{read_with, render};
use treecache::tree::zk::Paths;
use treecache::zkserver::free_port;
use zookeeper_client::{Acls, Client, CreateMode};

const UP_TIMEOUT: Duration = Duration::from_secs(120);

fn treecache(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run treecache")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `treecache up` child: SIGKILLed if the test fails before stopping it
/// (its nodes and ZooKeeper die with it).
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// What it printed on stderr so far.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn start(args: &[&str]) -> Up {
        let mut child = Command::new(BIN)
            .arg("up")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run treecache up");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let progress = Arc::new(Mutex::new(Vec::new()));
        let errors = progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("up: {line}");
                errors.lock().unwrap().push(line);
            }
        });
        Up { child, lines, seen: Vec::new(), stderr: progress }
    }

    /// Collects stdout up to the line that says the tree is up.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("Ctrl-C") => return,
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("treecache up not ready ({e}); it printed:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn sigterm_and_wait(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain syscall on our own, unreaped child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "treecache up did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// From `up`'s output: ZooKeeper's address, and each `node ...` line's words.
fn zk_and_nodes(out: &str) -> (String, Vec<Vec<&str>>) {
    let zk = out.lines().find_map(|l| l.strip_prefix("ZooKeeper  ")).expect("ZooKeeper line");
    let zk = zk.split_whitespace().next().unwrap().to_string();
    (zk, out.lines().filter(|l| l.starts_with("node ")).map(|l| l.split_whitespace().collect()).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn up_starts_a_tree_prints_it_and_stops_everything_on_sigterm() {
    let mut up = Up::start(&["--nodes", "3", "--cluster", "uptest"]);
    up.wait_ready();
    let out = up.seen.join("\n");
    let (zk, nodes) = zk_and_nodes(&out);
    assert_eq!(nodes.len(), 3, "{out}");
    let ids_roles: Vec<(&str, &str)> = nodes.iter().map(|n| (n[1], n[3])).collect();
    assert_eq!(ids_roles, [("1", "root"), ("2", "leaf"), ("3", "leaf")], "{out}");
    let urls: Vec<String> = nodes.iter().map(|n| n[2].to_string()).collect();
    // Every node speaks RESP on the port its line ends with.
    for n in &nodes {
        assert_eq!(n[n.len() - 2], "resp", "{out}");
        let port = n[n.len() - 1];
        let mut conn = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await.expect("RESP port");
        tokio::io::AsyncWriteExt::write_all(&mut conn, b"PING\r\n").await.unwrap();
        let mut pong = [0u8; 7];
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut pong).await.unwrap();
        assert_eq!(&pong, b"+PONG\r\n", "node {} at RESP port {port}", n[1]);
    }
    assert!(out.contains("redis-cli -p "), "{out}");
    // Progress while the nodes started (one line each: stderr is no terminal).
    let progress = up.stderr.lock().unwrap().clone();
    for (k, url) in urls.iter().enumerate() {
        let line = format!("started {}/3 {url}", k + 1);
        assert!(progress.contains(&line), "no {line:?} in {progress:?}");
    }
    assert!(out.lines().chain(progress.iter().map(String::as_str)).all(|l| l.chars().count() <= 80), "{out}");
    assert!(out.contains(&format!("1  {}  (root)", urls[0])), "{out}");
    assert!(out.contains(&format!("├── 2  {}", urls[1])), "{out}");
    assert!(out.contains(&format!("└── 3  {}", urls[2])), "{out}");
    for url in &urls {
        assert_eq!(reqwest::get(format!("{url}/health")).await.unwrap().status(), 200, "{url}");
    }

    let tree = treecache(&["tree", "--zk", &zk, "--cluster", "uptest"]);
    let drawn = String::from_utf8_lossy(&tree.stdout);
    assert!(tree.status.success(), "{}", stderr(&tree));
    assert!(drawn.starts_with("cluster uptest: root 1 at "), "{drawn}");
    assert!(drawn.contains("3 nodes, 3 live"), "{drawn}");
    // Each node's state, as it reports it, in 80 columns.
    assert!(drawn.contains(&format!("1  {}  (root)  alive, depth 0, ", urls[0])), "{drawn}");
    assert!(drawn.contains(&format!("└── 3  {}  alive, depth 1, 0 keys", urls[2])), "{drawn}");
    assert!(drawn.lines().all(|l| l.chars().count() <= 80), "{drawn}");

    let status = up.sigterm_and_wait();
    assert!(status.success(), "treecache up exited with {status}");
    for url in &urls {
        assert!(reqwest::get(format!("{url}/health")).await.is_err(), "{url} still answers");
    }
    assert!(std::net::TcpStream::connect(&zk).is_err(), "the private ZooKeeper still listens");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_tls_runs_the_tree_over_https_with_a_throwaway_ca() {
    let mut up = Up::start(&["--nodes", "3", "--cluster", "uptls", "--tls"]);
    up.wait_ready();
    let out = up.seen.join("\n");
    let urls: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("node "))
        .map(|l| l.split_whitespace().nth(2).unwrap().to_string())
        .collect();
    assert_eq!(urls.len(), 3, "{out}");
    assert!(urls.iter().all(|u| u.starts_with("https://127.0.0.1:")), "{out}");
    assert!(out.contains("(TLS, the nodes' port)"), "ZooKeeper serves the nodes over TLS: {out}");
    let ca = out.lines().find_map(|l| l.strip_prefix("TLS: nodes serve HTTPS; the throwaway CA is ")).expect("CA line");
    let ca = ca.split_whitespace().next().unwrap();
    // A client that trusts the printed CA, as the printed curl line does.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("the CA file") {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(treecache::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let http = reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap();
    let put = http.put(format!("{}/kv/greeting?ack=root", urls[1])).body("hello").send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let got = http.get(format!("{}/kv/greeting", urls[2])).send().await.unwrap();
    assert_eq!((got.status().as_u16(), got.text().await.unwrap().as_str()), (200, "hello"), "a fill over HTTPS");
    // The CLI, given the CA: `tree` reaches every node, `get` reads.
    let zk = out.lines().find_map(|l| l.strip_prefix("ZooKeeper  ")).expect("ZooKeeper line");
    let zk = zk.split_whitespace().next().unwrap();
    let tree = treecache(&["tree", "--zk", zk, "--cluster", "uptls", "--tls-ca", ca]);
    let drawn = String::from_utf8_lossy(&tree.stdout);
    assert!(tree.status.success(), "{}", stderr(&tree));
    assert_eq!(drawn.matches("alive, depth").count(), 3, "{drawn}");
    let got = treecache(&["get", "greeting", "--node", &urls[0], "--tls-ca", ca]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim_end(), "hello");
    let plain = urls[0].replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/health")).await.is_err(), "plain HTTP is not served");
    // RESP over TLS, as the printed redis-cli line says.
    let line = out.lines().find_map(|l| l.split_once("resp port: ").map(|(_, cmd)| cmd)).expect("redis-cli line");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..3], ["redis-cli", "--tls", "--cacert"], "{line}");
    let cli = std::process::Command::new("redis-cli").args(&words[1..]).args(["GET", "greeting"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cli.stdout).trim_end(), "hello", "{line}: {}", stderr(&cli));

    let status = up.sigterm_and_wait();
    assert!(status.success(), "treecache up exited with {status}");
    for url in &urls {
        assert!(http.get(format!("{url}/health")).send().await.is_err(), "{url} still answers");
    }
}

#[test]
fn up_refuses_an_unreachable_zookeeper_quickly() {
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let out = treecache(&["up", "--nodes", "2", "--zk", &addr]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("cannot reach ZooKeeper at {addr}")), "{}", stderr(&out));
}

#[test]
fn up_refuses_ttl_mode_without_max_age() {
    let out = treecache(&["up", "--mode", "ttl"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--max-age"), "{}", stderr(&out));
}

#[test]
fn tree_reports_an_unreachable_zookeeper() {
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let out = treecache(&["tree", "--zk", &addr]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("cannot reach ZooKeeper at {addr}")), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn tree_reports_a_cluster_that_never_ran() {
    let zk = Zk::start().await;
    let out = treecache(&["tree", "--zk", &zk.addr(), "--cluster", "nothing-here"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cluster \"nothing-here\" has no tree"), "{}", stderr(&out));
}

async fn create(zk: &Client, path: &str, data: &str) {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    zk.mkdir(path.rsplit_once('/').unwrap().0, &options).await.unwrap();
    zk.create(path, data.as_bytes(), &options).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tree_draws_what_zookeeper_records() {
    let zk = Zk::start().await;
    let client = zk.client().await;
    for (path, id) in [("1", 1), ("1/2", 2), ("1/3", 3), ("1/2/4", 4), ("1/2/5", 5), ("1/3/10", 10)] {
        let data = format!(r#"{{"id":{id},"url":"http://n{id}","depth":{}}}"#, path.matches('/').count());
        create(&client, &format!("/treecache/c1/tree/{path}"), &data).await;
    }
    for id in [1, 2, 3, 5, 10] {
        create(&client, &format!("/treecache/c1/live/{id}"), "").await;
    }
    create(&client, "/treecache/c1/groups/0/root", r#"{"id":1,"url":"http://n1","epoch":4}"#).await;
    let drawn = render(&zk.addr(), "c1").await.unwrap();
    assert_eq!(
        drawn,
        "cluster c1: root 1 at http://n1 (epoch 4); 6 nodes, 5 live\n\
         1  http://n1  (root)\n\
         ├── 2  http://n2\n\
         │   ├── 4  http://n4  (dead)\n\
         │   └── 5  http://n5\n\
         └── 3  http://n3\n\
         \u{20}   └── 10  http://n10\n"
    );
    // The command also asks each live node for its state; these URLs
    // lead nowhere, so every live node gets "(no answer)".
    let out = treecache(&["tree", "--zk", &zk.addr(), "--cluster", "c1"]);
    let expected: String = drawn
        .lines()
        .map(|l| {
            if l.starts_with("cluster") || l.ends_with("(dead)") {
                format!("{l}\n")
            } else {
                format!("{l}  (no answer)\n")
            }
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn tree_reports_zookeeper_going_away_mid_read() {
    let mut zk = Zk::start().await;
    let client = zk.client().await;
    create(&client, "/treecache/c2/tree/1", r#"{"id":1,"url":"http://n1","depth":0}"#).await;
    zk.stop();
    let read = tokio::time::timeout(Duration::from_secs(30), read_with(&client, &Paths::new("c2"))).await;
    let err = read.expect("the read gives up").unwrap_err();
    assert!(err.contains("cannot list /treecache/c2/tree"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_reports_a_node_that_cannot_start_with_its_log() {
    let zk = Zk::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "short\n").unwrap();
    let out = treecache(&["up", "--nodes", "2", "--zk", &zk.addr(), "--cluster-secret-file", secret.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(" exited with"), "{err}");
    assert!(err.contains("last lines of "), "{err}");
    // The node's own error, from its log.
    assert!(err.contains("use at least 16"), "{err}");
}

/// Answers every connection with `200 {}` until dropped: a stranger on a
/// port that passes a /health probe.
fn answering_stranger() -> (std::net::TcpListener, u16) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let serving = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        for mut conn in serving.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
        }
    });
    (listener, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn up_names_a_taken_port_even_when_its_owner_answers_health() {
    let zk = Zk::start().await;
    let (_stranger, port) = answering_stranger();
    let probe = reqwest::get(format!("http://127.0.0.1:{port}/health")).await.expect("the stranger answers");
    assert_eq!(probe.status(), 200, "the stranger would pass for a node");
    let out = treecache(&["up", "--nodes", "2", "--zk", &zk.addr(), "--base-port", &port.to_string()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot start the root on 127.0.0.1:{port}")), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains("pick another --base-port"), "{err}");
    assert!(!err.contains("no root published"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_groups_and_standbys_spreads_the_slots_and_routes_each_key_to_its_group() {
    let mut up = Up::start(&["--nodes", "3", "--groups", "2", "--standbys", "1", "--cluster", "groupsup"]);
    up.wait_ready();
    let out = up.seen.join("\n");
    let (zk, nodes) = zk_and_nodes(&out);
    // Group 0's root and standby, group 1's leader and standby, 2 caches.
    let roles: Vec<&str> = nodes.iter().map(|n| n[3]).collect();
    assert_eq!(roles, ["root", "standby", "root", "standby", "leaf", "leaf"], "{out}");
    assert!(out.contains("slots spread over 2 groups (map epoch 2): group 0: 0-511, group 1: 512-1023"), "{out}");
    let url = |i: usize| nodes[i][2].to_string();

    let slots = treecache(&["slots", "--zk", &zk, "--cluster", "groupsup"]);
    let text = String::from_utf8_lossy(&slots.stdout);
    assert!(slots.status.success(), "{text}{}", stderr(&slots));
    assert!(text.starts_with("cluster groupsup: slot map epoch 2, 2 groups"), "{text}");

    // A key of each group, written at a cache, is at its group's leader.
    let map = treecache::slots::SlotMap::even(&[0, 1], 2).unwrap();
    let key_of = |g: u32| (0..).map(|i| format!("up-{i}")).find(|k| map.owner_of(k) == g).unwrap();
    let http = reqwest::Client::new();
    for (group, leader) in [(0u32, 0usize), (1, 2)] {
        let key = key_of(group);
        let put = http.put(format!("{}/kv/{key}?ack=root", url(4))).body("v").send().await.unwrap();
        assert_eq!(put.status(), 201, "{key}");
        let at_leader = http.get(format!("{}/dump", url(leader))).send().await.unwrap().text().await.unwrap();
        assert!(at_leader.contains(&format!("\"{key}\"")), "group {group}'s leader lacks {key}: {at_leader}");
        let read = http.get(format!("{}/kv/{key}", url(5))).send().await.unwrap();
        assert_eq!(read.status(), 200, "{key} at the other cache");
    }

    let status = up.sigterm_and_wait();
    assert!(status.success(), "treecache up exited with {status}");
    for n in &nodes {
        assert!(reqwest::get(format!("{}/health", n[2])).await.is_err(), "{} still answers", n[2]);
    }
}
