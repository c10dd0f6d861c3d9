//! The test tooling itself, against the real thing: `LocalZk` (a private
//! ZooKeeper from the installed package) and the `tests/common` harness
//! (`Zk`, `Cluster`, `wait_until`).

mod common;

use std::time::Duration;

use common::{wait_until, Cluster, Opts, Zk};
use treecache::zkserver::LocalZk;
use zookeeper_client::{Acls, Client, CreateMode};

const WAIT: Duration = Duration::from_secs(20);

async fn create(zk: &Client, path: &str, data: &[u8]) {
    zk.create(path, data, &CreateMode::Persistent.with_acls(Acls::anyone_all())).await.expect("create znode");
}

fn port_open(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn local_zookeeper_serves_a_client_and_stops() {
    let mut zk = LocalZk::start().await.unwrap();
    assert!(zk.addr().starts_with("127.0.0.1:"));
    let client = Client::connect(&zk.addr()).await.unwrap();
    create(&client, "/hello", b"world").await;
    assert_eq!(client.get_data("/hello").await.unwrap().0, b"world");
    assert!(zk.is_running());
    zk.stop();
    assert!(!zk.is_running());
    assert!(!port_open(&zk.addr()), "nothing listens after stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_zookeeper_keeps_its_port_and_data() {
    let mut zk = LocalZk::start().await.unwrap();
    let addr = zk.addr();
    create(&Client::connect(&addr).await.unwrap(), "/kept", b"1").await;
    zk.stop();
    assert!(Client::connector().with_fail_eagerly().connect(&addr).await.is_err(), "an outage while stopped");
    zk.start_again().await.unwrap();
    assert_eq!(zk.addr(), addr);
    assert_eq!(Client::connect(&addr).await.unwrap().get_data("/kept").await.unwrap().0, b"1");
    zk.restart().await.unwrap();
    assert_eq!(Client::connect(&addr).await.unwrap().get_data("/kept").await.unwrap().0, b"1");
}

#[tokio::test(flavor = "multi_thread")]
async fn starting_a_running_zookeeper_again_is_refused() {
    let mut zk = LocalZk::start().await.unwrap();
    let err = zk.start_again().await.unwrap_err();
    assert!(err.contains("already running"), "{err}");
    assert!(zk.is_running(), "the running server is left alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_local_zookeeper_kills_the_jvm_and_removes_its_files() {
    let zk = LocalZk::start().await.unwrap();
    let (addr, dir) = (zk.addr(), zk.dir().to_path_buf());
    assert!(dir.join("zookeeper.log").exists());
    drop(zk);
    assert!(!port_open(&addr));
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_local_zookeepers_run_side_by_side() {
    let (a, b) = tokio::join!(LocalZk::start(), LocalZk::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.addr(), b.addr());
    create(&Client::connect(&a.addr()).await.unwrap(), "/only-in-a", b"").await;
    let in_b = Client::connect(&b.addr()).await.unwrap().get_data("/only-in-a").await;
    assert!(matches!(in_b, Err(zookeeper_client::Error::NoNode)), "{in_b:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn harness_zk_survives_an_outage() {
    let mut zk = Zk::start().await;
    create(&zk.client().await, "/x", b"y").await;
    zk.stop();
    zk.start_again().await;
    assert_eq!(zk.client().await.get_data("/x").await.unwrap().0, b"y");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_returns_once_the_probe_holds() {
    let start = std::time::Instant::now();
    wait_until(WAIT, "200 ms to pass", || async move { start.elapsed() > Duration::from_millis(200) }).await;
}

#[tokio::test(flavor = "multi_thread")]
#[should_panic(expected = "timed out after 200ms waiting for the impossible")]
async fn wait_until_panics_with_what_it_waited_for() {
    wait_until(Duration::from_millis(200), "the impossible", || async { false }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_starts_nodes_in_order_and_controls_each_one() {
    let mut c = Cluster::start_opts(Opts { nodes: 3, ..Opts::default() }).await;
    assert_eq!(c.node_ids(), [1, 2, 3]);
    let root = c.health(0).await;
    assert_eq!((root["role"].as_str(), root["children"].clone()), (Some("root"), serde_json::json!([2, 3])));
    assert_eq!(c.health(2).await["parent"], 1);

    let (status, _) = c.put(1, "k", "v", "?ack=root").await;
    assert!(status == 200 || status == 201, "PUT answered {status}");
    let read = c.get(2, "k", "").await;
    assert_eq!((read.status, read.text().as_str()), (200, "v"));
    assert_eq!(read.headers.get("x-node").and_then(|v| v.to_str().ok()), Some("3"));
    assert!(read.version.is_some());

    c.stop(2);
    assert_eq!(c.node_ids(), [1, 2]);
    assert!(reqwest::get(format!("{}/health", c.url(2))).await.is_err(), "a stopped node is gone");
    c.restart(2).await;
    assert_eq!(c.alive(), [0, 1, 2]);
    c.kill(1);
    assert_eq!(c.alive(), [0, 2]);
    let i = c.add_node().await;
    assert_eq!(i, 3);
    let new_id = c.id(3).await;
    assert_eq!(c.index_of(new_id), Some(3));
    wait_until(WAIT, "ZooKeeper to drop the killed node", || async {
        !c.zk_tree("live").await.contains(&"2".to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_passes_fanout_and_ttl_mode_to_the_root() {
    let c =
        Cluster::start_opts(Opts { nodes: 4, fanout: 3, mode: "ttl", max_age: Some("1s"), ..Opts::default() }).await;
    assert_eq!(c.health(0).await["children"], serde_json::json!([2, 3, 4]));
    let tree = c.http.get(format!("{}/tree", c.url(3))).send().await.unwrap().text().await.unwrap();
    assert!(tree.contains("ttl"), "node 4's /tree: {tree}");
}

/// Holds `addr` with a server that answers every connection with `answer`.
async fn squat(addr: &str, answer: &'static [u8]) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.expect("take the port");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 16];
            let _ = sock.read(&mut buf).await;
            let _ = sock.write_all(answer).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_refuses_a_port_someone_else_took() {
    let mut zk = LocalZk::start().await.unwrap();
    zk.stop();
    let squatter = squat(&zk.addr(), b"").await;
    let err = zk.start_again().await.unwrap_err();
    assert!(err.contains(&format!("port {} is taken", zk.port())), "{err}");
    assert!(!zk.is_running());
    squatter.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn another_zookeeper_on_the_port_is_not_mistaken_for_ours() {
    let mut zk = LocalZk::start().await.unwrap();
    zk.stop();
    let squatter = squat(&zk.addr(), b"clientPort=1\ndataDir=/somewhere/else/version-2\n").await;
    let err = zk.start_again().await.unwrap_err();
    assert!(err.contains("is taken by another process"), "{err}");
    squatter.abort();
}
