//! The checks at load, and handshakes in-process through [`Tls::acceptor`]
//! (the piece any listener takes) and [`Tls::client_config`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::certs::{Authority, Validity};
use super::*;

const HOSTS: &[&str] = &["127.0.0.1", "localhost"];

fn files(dir: &Path, ca: &Authority, name: &str) -> TlsFiles {
    ca.write_node_files(dir, name, HOSTS).unwrap()
}

fn load(files: &TlsFiles, auth: ClientAuth) -> Result<Tls, String> {
    Tls::load(files.clone(), auth, Some("127.0.0.1"))
}

#[test]
fn good_files_load_and_name_nothing_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let tls = load(&files(dir.path(), &ca, "n1"), ClientAuth::Request).unwrap();
    assert_eq!(tls.client_auth(), ClientAuth::Request);
    assert!(Tls::load(tls.files().clone(), ClientAuth::None, Some("localhost")).is_ok());
}

#[test]
fn a_missing_or_unreadable_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let good = files(dir.path(), &ca, "n1");
    let missing = dir.path().join("nope.pem");
    let with = |f: &dyn Fn(&mut TlsFiles)| {
        let mut files = good.clone();
        f(&mut files);
        load(&files, ClientAuth::None).unwrap_err()
    };
    let e = with(&|f| f.cert = missing.clone());
    assert!(e.starts_with(&format!("--tls-cert {}: ", missing.display())) && e.contains("No such file"), "{e}");
    let e = with(&|f| f.key = missing.clone());
    assert!(e.starts_with(&format!("--tls-key {}: ", missing.display())), "{e}");
    let e = with(&|f| f.ca = missing.clone());
    assert!(e.starts_with(&format!("--tls-ca {}: ", missing.display())), "{e}");
    // A directory cannot be read as a file, even by root (chmod 000 can).
    let e = with(&|f| f.cert = dir.path().to_path_buf());
    assert!(e.starts_with(&format!("--tls-cert {}: ", dir.path().display())), "{e}");
}

#[test]
fn files_that_are_not_pem_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let good = files(dir.path(), &ca, "n1");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let e = load(&TlsFiles { cert: junk.clone(), ..good.clone() }, ClientAuth::None).unwrap_err();
    assert!(e.contains(&format!("--tls-cert {}: no certificate in it", junk.display())), "{e}");
    let e = load(&TlsFiles { key: junk.clone(), ..good.clone() }, ClientAuth::None).unwrap_err();
    assert!(e.contains(&format!("--tls-key {}: no private key", junk.display())), "{e}");
    let e = load(&TlsFiles { ca: junk.clone(), ..good.clone() }, ClientAuth::None).unwrap_err();
    assert!(e.contains(&format!("--tls-ca {}: no certificate in it", junk.display())), "{e}");
    // A key given as the certificate: PEM, but no certificate in it.
    let e = load(&TlsFiles { cert: good.key.clone(), ..good.clone() }, ClientAuth::None).unwrap_err();
    assert!(e.contains("--tls-cert") && e.contains("no certificate in it"), "{e}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let one = files(&dir.path().join("a"), &ca, "n1");
    let two = files(&dir.path().join("b"), &ca, "n2");
    let e = load(&TlsFiles { key: two.key.clone(), ..one.clone() }, ClientAuth::None).unwrap_err();
    assert!(e.contains(&format!("--tls-key {} does not belong to", two.key.display())), "{e}");
    assert!(e.contains(&one.cert.display().to_string()), "{e}");
}

#[test]
fn a_certificate_the_ca_did_not_sign_expired_or_for_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let other = Authority::new("another CA").unwrap();
    let good = files(&dir.path().join("good"), &ca, "n1");
    let foreign = files(&dir.path().join("foreign"), &other, "n2");
    let e = load(&TlsFiles { ca: good.ca.clone(), ..foreign }, ClientAuth::None).unwrap_err();
    assert!(e.contains("is not usable with --tls-ca") && e.contains("not signed by this CA"), "{e}");
    let expired = ca.issue_with("old", HOSTS, Validity::Expired).unwrap().write(&dir.path().join("old"), "old", &ca);
    let e = load(&expired.unwrap(), ClientAuth::None).unwrap_err();
    assert!(e.contains("has expired"), "{e}");
    let e = Tls::load(good, ClientAuth::None, Some("10.9.8.7")).unwrap_err();
    assert!(e.contains("cannot serve as 10.9.8.7") && e.contains("does not name this host"), "{e}");
}

/// A TLS echo server on the acceptor (as a RESP listener would use it):
/// answers each connection's bytes with `ok:` and whether the client
/// verified.
async fn echo_server(tls: Tls) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.acceptor();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, tls) = (acceptor.clone(), tls.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(sock).await else { return };
                let verified = stream.get_ref().1.peer_certificates().is_some_and(|c| tls.verifies_client(c));
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let reply = format!("ok:{verified}:{}", String::from_utf8_lossy(&buf[..n]));
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(config: Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> std::io::Result<Stream> {
    let sock = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, sock).await
}

/// Sends `msg`, returns the answer (a refused client fails here at the
/// latest: TLS 1.3 reports a refused client certificate after the
/// client's side of the handshake is done).
async fn ask(stream: &mut Stream, msg: &str) -> std::io::Result<String> {
    stream.write_all(msg.as_bytes()).await?;
    let mut buf = [0u8; 128];
    let n = stream.read(&mut buf).await?;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

async fn roundtrip(config: Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut stream = connect(config, addr).await?;
    ask(&mut stream, "hi").await
}

/// A plain client of `ca` with no certificate of its own.
fn anonymous(ca: &Authority) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A node's client configuration, with its certificate from `issuer`
/// trusting `ca`.
fn node_client(dir: &Path, ca: &Authority, issuer: &Authority, validity: Validity) -> Arc<rustls::ClientConfig> {
    let issued = issuer.issue_with("client", HOSTS, validity).unwrap();
    let mut files = issued.write(dir, "client", issuer).unwrap();
    files.ca = dir.join("trust.pem");
    std::fs::write(&files.ca, ca.cert_pem()).unwrap();
    // Load without the checks a node makes of itself: build the client
    // configuration straight from the files (an expired or foreign one
    // must still be presentable).
    let provider = provider();
    let chain: Vec<_> = CertificateDer::pem_file_iter(&files.cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::pem_file_iter(&files.ca).unwrap().next().unwrap().unwrap()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

#[tokio::test]
async fn nodes_authenticate_each_other_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    for mode in [ClientAuth::None, ClientAuth::Request, ClientAuth::Require] {
        let server = load(&files(&dir.path().join("s"), &ca, "server"), mode).unwrap();
        let client = load(&files(&dir.path().join("c"), &ca, "client"), ClientAuth::None).unwrap();
        let addr = echo_server(server).await;
        assert_eq!(roundtrip(client.client_config(), addr).await.unwrap(), "ok:true:hi", "{mode:?}");
    }
}

#[tokio::test]
async fn what_a_client_must_show_follows_client_auth() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let other = Authority::new("another CA").unwrap();
    let foreign = node_client(&dir.path().join("f"), &ca, &other, Validity::Always);
    let expired = node_client(&dir.path().join("e"), &ca, &ca, Validity::Expired);
    for (mode, anon, foreign_ok, expired_ok) in [
        (ClientAuth::None, Some("ok:false:hi"), Some("ok:false:hi"), Some("ok:false:hi")),
        (ClientAuth::Request, Some("ok:false:hi"), None, None),
        (ClientAuth::Require, None, None, None),
    ] {
        let server = load(&files(&dir.path().join(mode.as_str()), &ca, "server"), mode).unwrap();
        let addr = echo_server(server).await;
        let got = |r: std::io::Result<String>| r.ok();
        assert_eq!(got(roundtrip(anonymous(&ca), addr).await).as_deref(), anon, "{mode:?}: no certificate");
        assert_eq!(got(roundtrip(foreign.clone(), addr).await).as_deref(), foreign_ok, "{mode:?}: another CA's");
        assert_eq!(got(roundtrip(expired.clone(), addr).await).as_deref(), expired_ok, "{mode:?}: expired");
    }
}

#[tokio::test]
async fn a_node_refuses_a_server_of_another_ca_or_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let other = Authority::new("another CA").unwrap();
    let client = load(&files(&dir.path().join("c"), &ca, "client"), ClientAuth::None).unwrap();
    let stranger = load(&files(&dir.path().join("s"), &other, "server"), ClientAuth::None).unwrap();
    let addr = echo_server(stranger).await;
    let e = roundtrip(client.client_config(), addr).await.unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // Issued by our CA, but for another host than the one dialled.
    let elsewhere = ca.issue("elsewhere", &["10.9.8.7"]).unwrap().write(&dir.path().join("x"), "x", &ca).unwrap();
    let elsewhere = Tls::load(elsewhere, ClientAuth::None, None).unwrap();
    let addr = echo_server(elsewhere).await;
    let e = roundtrip(client.client_config(), addr).await.unwrap_err();
    assert!(e.to_string().contains("not valid for name"), "{e}");
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Authority::new("old CA").unwrap();
    let new_ca = Authority::new("new CA").unwrap();
    let server_files = files(&dir.path().join("s"), &old_ca, "server");
    let server = load(&server_files, ClientAuth::Require).unwrap();
    let addr = echo_server(server.clone()).await;
    let old_client = load(&files(&dir.path().join("c1"), &old_ca, "client"), ClientAuth::None).unwrap();
    let new_client = load(&files(&dir.path().join("c2"), &new_ca, "client"), ClientAuth::None).unwrap();
    let mut open = connect(old_client.client_config(), addr).await.unwrap();
    assert_eq!(ask(&mut open, "one").await.unwrap(), "ok:true:one");
    assert!(roundtrip(new_client.client_config(), addr).await.is_err(), "the new CA is not trusted yet");

    // Bad files on reload change nothing.
    std::fs::write(&server_files.cert, "garbage").unwrap();
    let e = server.reload().unwrap_err();
    assert!(e.contains("--tls-cert"), "{e}");
    assert_eq!(roundtrip(old_client.client_config(), addr).await.unwrap(), "ok:true:hi");

    // The operator rotates to the new CA: certificate, key and CA files.
    new_ca.write_node_files(&dir.path().join("s"), "server", HOSTS).unwrap();
    server.reload().unwrap();
    assert_eq!(roundtrip(new_client.client_config(), addr).await.unwrap(), "ok:true:hi");
    assert!(roundtrip(old_client.client_config(), addr).await.is_err(), "the old CA is gone");
    assert_eq!(ask(&mut open, "two").await.unwrap(), "ok:true:two", "the open connection goes on");
}

#[test]
fn node_files_are_private_where_they_hold_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let f = files(dir.path(), &ca, "n1");
    let mode = |p: &PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&f.cert), mode(&f.key), mode(&f.ca)), (0o644, 0o600, 0o644));
}
