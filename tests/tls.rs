//! TLS against real processes (issue 23): every certificate is made at
//! test time by the test's own CA (rcgen, `treecache::tls::certs`), with
//! an expired one and one from another CA where a test needs them. The
//! whole tree works over HTTPS with ZooKeeper over TLS (fills, writes,
//! pushes, replication, a standby taking over); a plaintext client fails
//! cleanly; a node of another CA cannot join; an expired certificate is
//! refused; `--tls-client-auth require` refuses a client without one;
//! SIGHUP reloads the certificate without dropping connections; bad files
//! stop a node at start with exit 2, naming the file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client_config, tls_flags, wait_until, Cluster, Opts, LOOPBACK};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use treecache::tls::certs::{Authority, Validity};
use treecache::tls::TlsFiles;

const SETTLE: Duration = Duration::from_secs(20);

fn tls_opts(nodes: usize) -> Opts {
    Opts { nodes, tls: true, ..Opts::default() }
}

fn ca(c: &Cluster) -> &Authority {
    c.ca.as_ref().expect("a TLS cluster")
}

fn https(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder().use_preconfigured_tls(config).build().expect("HTTPS client")
}

/// An HTTPS client that trusts the cluster's CA and has no certificate.
fn anonymous(c: &Cluster) -> reqwest::Client {
    https(client_config(ca(c).cert_pem(), None))
}

/// An HTTPS client presenting a certificate of `issuer` valid as `validity`.
fn presenting(c: &Cluster, issuer: &Authority, validity: Validity) -> reqwest::Client {
    let issued = issuer.issue_with("client", LOOPBACK, validity).expect("certificate");
    https(client_config(ca(c).cert_pem(), Some((&issued.cert_pem, &issued.key_pem))))
}

/// GET url/health with `http`: the status, or the error's text.
async fn health(http: &reqwest::Client, url: &str) -> Result<u16, String> {
    match http.get(format!("{url}/health")).timeout(Duration::from_secs(5)).send().await {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// The JSON of a znode, read through ZooKeeper's plain loopback port.
async fn znode(c: &Cluster, rel: &str) -> Value {
    let zk = c.zk.client().await;
    let (data, _) = zk.get_data(&format!("/treecache/{}/{rel}", c.name)).await.expect("znode");
    serde_json::from_slice(&data).expect("znode JSON")
}

async fn put_root(c: &Cluster, i: usize, key: &str, value: &str) -> u64 {
    let (status, body) = c.put(i, key, value, "?ack=root").await;
    assert!(status == 200 || status == 201, "PUT {key} at node {i}: {status} {body}");
    body["version"].as_u64().expect("ack=root answers a version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_tree_works_over_tls_with_zookeeper_over_tls() {
    let mut c =
        Cluster::start_opts(Opts { nodes: 5, tls: true, zk_tls: true, durable_root: true, ..Opts::default() }).await;
    // Every node was given ZooKeeper's secure port only, and registered
    // an https URL.
    assert!(c.url(0).starts_with("https://"));
    let root = znode(&c, "groups/0/root").await;
    assert!(root["url"].as_str().unwrap().starts_with("https://127.0.0.1:"), "{root}");
    for rel in c.zk_tree("tree").await {
        let rec = znode(&c, &format!("tree/{rel}")).await;
        assert!(rec["url"].as_str().unwrap().starts_with("https://"), "tree/{rel}: {rec}");
    }
    assert_eq!(c.zk_tree("live").await.len(), 5);
    // That port speaks TLS only, and wants a certificate of the CA.
    let secure = c.zk.secure_addr();
    let plain = zookeeper_client::Client::connector().with_fail_eagerly().connect(&secure);
    assert!(
        !matches!(tokio::time::timeout(Duration::from_secs(5), plain).await, Ok(Ok(_))),
        "plain client on {secure}"
    );
    let files = common::client_files(ca(&c), &c.path("zk-client"));
    let tls = treecache::tls::Tls::load(files, treecache::tls::ClientAuth::None, None).unwrap();
    let zk = zookeeper_client::Client::connector().with_tls(tls.zk_options()).secure_connect(&secure);
    let zk = tokio::time::timeout(Duration::from_secs(10), zk).await.expect("in time").expect("TLS session");
    assert_eq!(zk.list_children(&format!("/treecache/{}/live", c.name)).await.unwrap().len(), 5);

    // Writes up, fills down: a write at one leaf read at another.
    let (a, b) = (3, 4);
    let v1 = put_root(&c, a, "k", "one").await;
    let r = c.get(b, "k", "").await;
    assert_eq!((r.status, r.text(), r.version, r.cache.as_deref()), (200, "one".into(), Some(v1), Some("miss")));
    assert_eq!(c.get(b, "k", "").await.cache.as_deref(), Some("hit"));
    // A push reaches the holders: a write at the root shows up at b.
    let v2 = put_root(&c, 0, "k", "two").await;
    wait_until(SETTLE, "the push to reach the leaf", || async {
        let r = c.get(b, "k", "").await;
        r.version == Some(v2) && r.cache.as_deref() == Some("hit")
    })
    .await;

    // Replication to a standby root over HTTPS, then its takeover.
    let dir = c.path("standby-data");
    let s = c.add_node_with(&["--root", "--data-dir", dir.to_str().unwrap()]).await;
    assert_eq!(c.health(s).await["role"], "standby");
    let (leader, standby) = (c.id(0).await, c.id(s).await);
    wait_until(SETTLE, "the standby in sync", || async {
        let ids = znode(&c, "groups/0/leader").await["in_sync"].as_array().map(|a| a.len()).unwrap_or(0);
        ids == 2
    })
    .await;
    let v3 = put_root(&c, a, "after-standby", "three").await;
    c.kill(0);
    wait_until(Duration::from_secs(60), "the standby to take over", || async { c.health(s).await["role"] == "root" })
        .await;
    assert_ne!(leader, standby);
    let r = c.get(s, "after-standby", "").await;
    assert_eq!((r.status, r.text(), r.version), (200, "three".into(), Some(v3)), "replicated before the kill");
    let new_root = znode(&c, "groups/0/root").await;
    assert_eq!(new_root["id"].as_u64(), Some(standby));
    assert!(new_root["url"].as_str().unwrap().starts_with("https://"), "{new_root}");
    // The tree goes on under the new root, over HTTPS.
    wait_until(Duration::from_secs(60), "a write through a cache under the new root", || async {
        let (status, body) = c.put(b, "after-takeover", "four", "?ack=root").await;
        status == 200 && body["version"].as_u64().is_some()
    })
    .await;
    wait_until(SETTLE, "the other leaf to read it", || async {
        let r = c.get(a, "after-takeover", "").await;
        r.status == 200 && r.text() == "four"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_to_a_tls_node_fails_cleanly() {
    let c = Cluster::start_opts(tls_opts(1)).await;
    let plain_url = c.url(0).replacen("https://", "http://", 1);
    // reqwest over plain HTTP: an error, not a hang and not a 200.
    let err = health(&reqwest::Client::new(), &plain_url).await.unwrap_err();
    assert!(!err.contains("TimedOut"), "{err}");
    // A raw plaintext request: the node closes the connection.
    let addr = plain_url.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the node closes a plaintext connection rather than leaving it hanging");
    assert!(!String::from_utf8_lossy(&buf).contains("\"status\""), "no answer in clear: {buf:?}");
    // And keeps serving TLS clients.
    assert_eq!(health(&c.http, &c.url(0)).await, Ok(200));
    assert_eq!(c.health(0).await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_comes_from_another_ca_cannot_join() {
    let mut c = Cluster::start_opts(tls_opts(2)).await;
    let other = Authority::new("another CA").unwrap();
    // It trusts the cluster's CA too (so its own checks pass and it can
    // verify the root), but its certificate is the other CA's: the root
    // must refuse it.
    let dir = c.tls_dir().join("stranger");
    let mut files = other.write_node_files(&dir, "stranger", LOOPBACK).unwrap();
    let bundle = dir.join("both-cas.pem");
    std::fs::write(&bundle, format!("{}{}", ca(&c).cert_pem(), other.cert_pem())).unwrap();
    files.ca = bundle;
    let flags = tls_flags(&files);
    let stranger = c.add_node_unwaited(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until(SETTLE, "the stranger to be refused", || async {
        c.log(stranger).contains("refused our certificate") && c.log(stranger).contains("(401): not joining")
    })
    .await;
    assert_eq!(c.zk_tree("live").await.len(), 2, "only the cluster's own nodes are live");
    // Nor can it serve as a parent: a node of the cluster does not trust
    // its certificate (the harness client trusts the cluster's CA only).
    let err = health(&c.http, &c.url(stranger)).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A node of the other CA throughout (its CA too) cannot verify the
    // root, and the root would not take it either.
    let dir = c.tls_dir().join("foreign");
    let files = other.write_node_files(&dir, "foreign", LOOPBACK).unwrap();
    let flags = tls_flags(&files);
    let foreign = c.add_node_unwaited(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until(SETTLE, "the foreign node to fail to reach the root", || async {
        let log = c.log(foreign);
        log.contains("joining the tree failed") && log.contains("UnknownIssuer")
    })
    .await;
    assert_eq!(c.zk_tree("live").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let mut c = Cluster::start_opts(tls_opts(1)).await;
    // A node with an expired certificate stops at start, naming the file.
    let dir = c.tls_dir().join("old");
    let issued = ca(&c).issue_with("old", LOOPBACK, Validity::Expired).unwrap();
    let files = issued.write(&dir, "old", ca(&c)).unwrap();
    let flags = tls_flags(&files);
    let old = c.add_node_unwaited(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, log) = c.wait_exit(old).await;
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains(&format!("--tls-cert {}", files.cert.display())) && log.contains("has expired"), "{log}");

    // Presented to a node (default --tls-client-auth none), it opens no
    // internal route even with the cluster secret.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-treecache-secret", c.secret().parse().unwrap());
    let expired = client_config(ca(&c).cert_pem(), Some((&issued.cert_pem, &issued.key_pem)));
    let http = reqwest::Client::builder().default_headers(headers).use_preconfigured_tls(expired).build().unwrap();
    let resp = http
        .post(format!("{}/clients/register", c.url(0)))
        .json(&serde_json::json!({"url": "https://127.0.0.1:9"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("no client certificate from the cluster's CA"), "{body}");
    assert_eq!(c.zk_tree("live").await.len(), 1, "nothing registered");
    // With the secret and a valid certificate the gate opens, and the
    // registrar takes https:// URLs only.
    let resp = c
        .peer_http()
        .post(format!("{}/clients/register", c.url(0)))
        .json(&serde_json::json!({"url": "http://127.0.0.1:9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("is not https://"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_a_client_without_a_certificate_is_refused() {
    let require = vec!["--tls-client-auth".to_string(), "require".to_string()];
    let c = Cluster::start_opts(Opts { root_args: require.clone(), node_args: require, ..tls_opts(3) }).await;
    // Nodes present their certificates: the tree formed, and serves.
    let v = put_root(&c, 1, "k", "v").await;
    let r = c.get(2, "k", "").await;
    assert_eq!((r.status, r.version), (200, Some(v)));
    for i in 0..3 {
        let err = health(&anonymous(&c), &c.url(i)).await.unwrap_err();
        assert!(err.contains("CertificateRequired") || err.contains("handshake") || err.contains("Connect"), "{err}");
        let other = Authority::new("another CA").unwrap();
        assert!(health(&presenting(&c, &other, Validity::Always), &c.url(i)).await.is_err(), "another CA's");
        assert!(health(&presenting(&c, ca(&c), Validity::Expired), &c.url(i)).await.is_err(), "expired");
        assert_eq!(health(&presenting(&c, ca(&c), Validity::Always), &c.url(i)).await, Ok(200));
    }
    // Without require, the same anonymous client is served.
    let open = Cluster::start_opts(tls_opts(1)).await;
    assert_eq!(health(&anonymous(&open), &open.url(0)).await, Ok(200));
}

/// A TLS connection to node `i` of `c` (trusting its CA, presenting a
/// certificate of it) that sends `GET /health` with keep-alive and reads
/// the answer's status line; the certificate the node served.
struct Conn {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl Conn {
    async fn open(c: &Cluster, i: usize) -> Conn {
        let issued = ca(c).issue("client", LOOPBACK).unwrap();
        let config = client_config(ca(c).cert_pem(), Some((&issued.cert_pem, &issued.key_pem)));
        let addr = c.url(i).trim_start_matches("https://").to_string();
        let sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, sock).await.expect("handshake");
        Conn { stream }
    }

    fn served(&self) -> Vec<u8> {
        self.stream.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec()
    }

    /// One keep-alive request; the status line of its answer.
    async fn health(&mut self) -> std::io::Result<String> {
        self.stream.write_all(b"GET /health HTTP/1.1\r\nhost: node\r\n\r\n").await?;
        let mut buf = vec![0u8; 4096];
        let n = self.stream.read(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Ok(text.lines().next().unwrap_or_default().to_string())
    }
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let c = Cluster::start_opts(tls_opts(2)).await;
    let root_files = root_tls_files(&c);
    let mut open = Conn::open(&c, 0).await;
    let before = open.served();
    assert_eq!(der(&std::fs::read_to_string(&root_files.cert).unwrap()), before);
    assert_eq!(open.health().await.unwrap(), "HTTP/1.1 200 OK");

    // Bad files: logged, nothing changes.
    std::fs::write(&root_files.cert, "not a certificate").unwrap();
    c.signal_hup(0);
    wait_until(SETTLE, "the refused reload in the log", || async {
        c.log(0).contains("TLS files not reloaded, the old ones stay in use")
    })
    .await;
    assert_eq!(Conn::open(&c, 0).await.served(), before, "still the old certificate");

    // A new certificate (the operator renewed it): new connections get it,
    // the open one goes on, and the tree keeps working across it.
    let renewed = ca(&c).issue("renewed", LOOPBACK).unwrap();
    std::fs::write(&root_files.key, &renewed.key_pem).unwrap();
    std::fs::write(&root_files.cert, &renewed.cert_pem).unwrap();
    c.signal_hup(0);
    wait_until(SETTLE, "the reload in the log", || async { c.log(0).contains("SIGHUP: reloaded TLS certificate") })
        .await;
    assert_eq!(Conn::open(&c, 0).await.served(), der(&renewed.cert_pem), "new handshakes get the new certificate");
    assert_eq!(open.health().await.unwrap(), "HTTP/1.1 200 OK", "the open connection was not dropped");
    let v = put_root(&c, 1, "after-reload", "x").await;
    assert_eq!(c.get(1, "after-reload", "").await.version, Some(v));
    assert_eq!(c.health(0).await["status"], "ok");
}

/// The root's --tls-cert/--tls-key/--tls-ca, as the harness wrote them.
fn root_tls_files(c: &Cluster) -> TlsFiles {
    let dir = c.tls_dir().join("node-0");
    TlsFiles { cert: dir.join("node.pem"), key: dir.join("node-key.pem"), ca: dir.join("ca.pem") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_a_node_at_start_naming_the_file() {
    let mut c = Cluster::start_opts(tls_opts(1)).await;
    let good = root_tls_files(&c);
    let other = ca(&c).issue("other", LOOPBACK).unwrap().write(&c.tls_dir().join("other"), "other", ca(&c)).unwrap();
    let missing = c.tls_dir().join("missing.pem");
    let cases: Vec<(TlsFiles, String)> = vec![
        (TlsFiles { cert: missing.clone(), ..good.clone() }, format!("--tls-cert {}: No such file", missing.display())),
        (
            TlsFiles { key: other.key.clone(), ..good.clone() },
            format!("--tls-key {} does not belong to the certificate", other.key.display()),
        ),
        // A directory: unreadable as a file, even by root.
        (TlsFiles { ca: c.tls_dir(), ..good.clone() }, format!("--tls-ca {}: ", c.tls_dir().display())),
    ];
    let before = c.zk_tree("live").await;
    for (files, expected) in cases {
        let flags = tls_flags(&files);
        let i = c.add_node_unwaited(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        let (code, log) = c.wait_exit(i).await;
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
        // Nothing started: no listener, nothing in ZooKeeper.
        let addr = c.url(i).trim_start_matches("https://").to_string();
        assert!(tokio::net::TcpStream::connect(&addr).await.is_err(), "nothing listens on {addr}");
        assert_eq!(c.zk_tree("live").await, before);
    }
    // Flags that do not go together are refused the same way.
    for (flags, expected) in [
        (vec!["--zk-tls"], "--zk-tls needs --tls-cert"),
        (vec!["--tls-client-auth", "require"], "--tls-client-auth needs --tls-cert"),
    ] {
        let i = c.add_node_unwaited_plain(&flags);
        let (code, log) = c.wait_exit(i).await;
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains(expected), "{log}");
    }
}
