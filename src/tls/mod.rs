//! TLS for a node: the certificate it presents, the CA it trusts, and the
//! rustls configurations built from them, for every listener and for the
//! node's one HTTP client. Owns the files named by `--tls-cert`,
//! `--tls-key` and `--tls-ca`, their checks at start (a clear error naming
//! the file) and their reload on SIGHUP. Knows nothing of nodes, routes or
//! handlers: TLS is configuration of the listeners and of the client, not a
//! branch in a handler.
//!
//! - [`Tls::server_config`]: the listeners' `rustls::ServerConfig`. The
//!   HTTP server takes it (`server.rs`); any other listener takes the same
//!   one, e.g. a RESP listener through [`Tls::acceptor`] (a
//!   `tokio_rustls::TlsAcceptor` over a plain `TcpStream`), and gets the same
//!   certificates, client authentication and reloads.
//! - [`Tls::client_config`]: the node's `rustls::ClientConfig` (its HTTP
//!   client, `build_http`): verifies other nodes against `--tls-ca` (host
//!   names included) and always presents this node's certificate (mutual
//!   TLS between nodes).
//! - [`Tls::zk_options`]: the same CA and certificate for ZooKeeper
//!   (`--zk-tls`), through zookeeper-client's dynamic certificates, so a
//!   reload reaches new ZooKeeper connections too.
//!
//! Every handshake asks the client for a certificate (nodes must present
//! theirs). `--tls-client-auth` decides what that means for a client:
//! `none`, a client's certificate is not checked at the handshake (and
//! none is needed); `request`, none is needed but one presented must chain
//! to `--tls-ca` and be valid; `require`, a client without a valid one is
//! refused at the handshake. Whatever the mode, each connection is marked
//! [`PeerVerified`] when its client presented a certificate that chains to
//! `--tls-ca`; the internal routes admit only such connections (see
//! `crate::auth::Guard`).
//!
//! A reload ([`Tls::reload`]) reads the three files again and swaps what
//! the configurations use: connections open keep going, new handshakes get
//! the new certificate and CA. Bad files on reload change nothing.
//!
//! The crypto provider is aws-lc-rs (the one zookeeper-client's rustls
//! brings); [`provider`] gives it to every configuration built here.

pub mod certs;

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore, ServerConfig, SignatureScheme,
};

/// What a client must show at the handshake (`--tls-client-auth`). Nodes
/// always present their certificate to each other, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ClientAuth {
    /// No client certificate is needed, and one a client presents is not
    /// checked at the handshake.
    #[default]
    None,
    /// No client certificate is needed; one that is presented must be
    /// valid and chain to `--tls-ca`.
    Request,
    /// A client without a valid certificate from `--tls-ca` is refused.
    Require,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Request => "request",
            ClientAuth::Require => "require",
        }
    }
}

/// The three files of a node's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: PEM, this node's certificate first, then any
    /// intermediates.
    pub cert: PathBuf,
    /// `--tls-key`: PEM, the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `--tls-ca`: PEM, the CA certificate(s) every node's certificate
    /// chains to.
    pub ca: PathBuf,
}

/// Marks a connection whose client presented a certificate that chains to
/// `--tls-ca` (a node, or a client holding such a certificate). Set by
/// [`Tls::on_connect`] in the connection's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerVerified;

/// The crypto provider of every configuration built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process's default provider, for code that builds
/// rustls configurations without naming one (zookeeper-client, and
/// reqwest's clients without a configuration of ours). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// What the files held, checked; swapped whole on reload.
struct Material {
    key: Arc<CertifiedKey>,
    /// Verifies other nodes as servers (the CA, validity, host names).
    servers: Arc<WebPkiServerVerifier>,
    /// Verifies client certificates (the CA, validity, client use).
    clients: Arc<dyn ClientCertVerifier>,
    zk: zookeeper_client::TlsCerts,
}

/// What the rustls configurations consult on every handshake.
struct Shared {
    material: RwLock<Arc<Material>>,
    provider: Arc<CryptoProvider>,
    client_auth: ClientAuth,
    /// Resumable sessions, both sides: emptied by a reload, so no
    /// connection made after it resumes a session verified before it.
    server_sessions: RwLock<Arc<ServerSessionMemoryCache>>,
    client_sessions: RwLock<Arc<ClientSessionMemoryCache>>,
}

/// Sessions kept per side (rustls's default size).
const SESSIONS: usize = 256;

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls::Shared(client auth {})", self.client_auth.as_str())
    }
}

impl Shared {
    fn current(&self) -> Arc<Material> {
        self.material.read().clone()
    }

    /// A handshake signature by `cert`'s key (TLS 1.3 or 1.2), for both
    /// verifiers.
    fn signed(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        if tls13 {
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
        } else {
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
        }
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A node's TLS: cheap to clone (a refcount).
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    shared: Arc<Shared>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    zk: zookeeper_client::TlsDynamicCerts,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.inner.files).field("client_auth", &self.client_auth()).finish()
    }
}

impl Tls {
    /// Reads and checks the files: every certificate parses, the key is
    /// the certificate's, the CA signed the certificate, which is valid now
    /// and fit for both server and client use, and, when `host` is given
    /// (the host of the URL this node advertises), names it. Errors name
    /// the flag and the file.
    pub fn load(files: TlsFiles, client_auth: ClientAuth, host: Option<&str>) -> Result<Tls, String> {
        let provider = provider();
        let material = Material::load(&files, &provider, host)?;
        let shared = Arc::new(Shared {
            material: RwLock::new(Arc::new(material)),
            provider: provider.clone(),
            client_auth,
            server_sessions: RwLock::new(ServerSessionMemoryCache::new(SESSIONS)),
            client_sessions: RwLock::new(Arc::new(ClientSessionMemoryCache::new(SESSIONS))),
        });
        let zk = zookeeper_client::TlsDynamicCerts::new(shared.current().zk.clone());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(|e| format!("TLS server configuration: {e}"))?
            .with_client_cert_verifier(Arc::new(Clients(shared.clone())))
            .with_cert_resolver(Arc::new(Current(shared.clone())));
        server.session_storage = Arc::new(Current(shared.clone()));
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(|e| format!("TLS client configuration: {e}"))?
            .dangerous()
            // Not dangerous: it delegates to webpki over --tls-ca, host
            // names included; a custom verifier only so a reload swaps it.
            .with_custom_certificate_verifier(Arc::new(Current(shared.clone())))
            .with_client_cert_resolver(Arc::new(Current(shared.clone())));
        client.resumption = rustls::client::Resumption::store(Arc::new(Current(shared.clone())));
        Ok(Tls { inner: Arc::new(Inner { files, shared, server: Arc::new(server), client: Arc::new(client), zk }) })
    }

    /// Reads the files again; on success new handshakes use them (open
    /// connections are not touched). On error nothing changes.
    pub fn reload(&self) -> Result<(), String> {
        let material = Material::load(&self.inner.files, &self.inner.shared.provider, None)?;
        self.inner.zk.update(material.zk.clone());
        let shared = &self.inner.shared;
        *shared.material.write() = Arc::new(material);
        *shared.server_sessions.write() = ServerSessionMemoryCache::new(SESSIONS);
        *shared.client_sessions.write() = Arc::new(ClientSessionMemoryCache::new(SESSIONS));
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    pub fn client_auth(&self) -> ClientAuth {
        self.inner.shared.client_auth
    }

    /// The listeners' configuration (HTTP, and any other listener).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.server.clone()
    }

    /// An acceptor for a listener of another protocol (RESP): the same
    /// configuration as the HTTP listener.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config())
    }

    /// The node's client configuration (its HTTP client).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.inner.client.clone()
    }

    /// zookeeper-client's options over the same CA and certificate
    /// (`--zk-tls`); a reload reaches connections made after it.
    pub fn zk_options(&self) -> zookeeper_client::TlsOptions {
        install_default_provider();
        zookeeper_client::TlsOptions::new().with_certs(self.inner.zk.clone())
    }

    /// True when `chain` (a client's certificates, its own first) chains
    /// to `--tls-ca` and is valid now, for client use.
    pub fn verifies_client(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((end, intermediates)) = chain.split_first() else { return false };
        self.inner.shared.current().clients.verify_client_cert(end, intermediates, UnixTime::now()).is_ok()
    }

    /// actix-web's `on_connect` hook for a rustls listener: marks the
    /// connection [`PeerVerified`] when its client's certificate verifies.
    pub fn on_connect(&self, conn: &dyn Any, ext: &mut actix_web::dev::Extensions) {
        type Stream = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        let Some(stream) = conn.downcast_ref::<Stream>() else { return };
        if let Some(chain) = stream.get_ref().1.peer_certificates() {
            if self.verifies_client(chain) {
                ext.insert(PeerVerified);
            }
        }
    }
}

/// A client configuration that trusts the CA in `ca` (PEM) and presents
/// no certificate: for clients of nodes (the bench, the CLI) under
/// `--tls-client-auth none` or `request`.
pub fn client_config_trusting(ca: &Path) -> Result<ClientConfig, String> {
    let pem = read("--tls-ca", ca)?;
    let mut roots = RootCertStore::empty();
    for cert in certificates("--tls-ca", ca, &pem)? {
        roots.add(cert).map_err(|e| format!("--tls-ca {}: not a usable CA certificate: {e}", ca.display()))?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reads a file named by `flag`, for an error that names both.
fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn certificates(flag: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in it (expected PEM, -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

impl Material {
    fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>, host: Option<&str>) -> Result<Material, String> {
        let (cert_path, key_path, ca_path) = (&files.cert, &files.key, &files.ca);
        let cert_pem = read("--tls-cert", cert_path)?;
        let key_pem = read("--tls-key", key_path)?;
        let ca_pem = read("--tls-ca", ca_path)?;
        let chain = certificates("--tls-cert", cert_path, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("--tls-key {}: no private key in it (expected PEM): {e}", key_path.display()))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("--tls-key {}: unusable private key: {e}", key_path.display()))?;
        let key = CertifiedKey::new(chain.clone(), signing);
        key.keys_match().map_err(|e| {
            format!(
                "--tls-key {} does not belong to the certificate in --tls-cert {} ({e})",
                key_path.display(),
                cert_path.display()
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in certificates("--tls-ca", ca_path, &ca_pem)? {
            roots.add(ca).map_err(|e| format!("--tls-ca {}: not a usable CA certificate: {e}", ca_path.display()))?;
        }
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("--tls-ca {}: {e}", ca_path.display()))?;
        let servers = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("--tls-ca {}: {e}", ca_path.display()))?;
        let now = UnixTime::now();
        let (end, intermediates) = chain.split_first().expect("certificates() returns at least one");
        // As a client to other nodes: the CA, the validity, client use.
        clients.verify_client_cert(end, intermediates, now).map_err(|e| {
            format!(
                "--tls-cert {} is not usable with --tls-ca {}: {}",
                cert_path.display(),
                ca_path.display(),
                describe(&e)
            )
        })?;
        // As a server: server use and, when known, the advertised host.
        if let Some(host) = host {
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| format!("cannot check --tls-cert against host {host:?}: not a host name or address"))?;
            servers.verify_server_cert(end, intermediates, &name, &[], now).map_err(|e| {
                format!(
                    "--tls-cert {} cannot serve as {host} (the host this node advertises): {}",
                    cert_path.display(),
                    describe(&e)
                )
            })?;
        }
        let zk = zk_certs(&cert_pem, &key_pem, &ca_pem)
            .map_err(|e| format!("--tls-cert {} for ZooKeeper: {e}", cert_path.display()))?;
        Ok(Material { key: Arc::new(key), servers, clients, zk })
    }
}

/// The same PEM texts as zookeeper-client's certificates.
fn zk_certs(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<zookeeper_client::TlsCerts, String> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let ca = zookeeper_client::TlsCa::from_pem(&text(ca)).map_err(|e| e.to_string())?;
    let identity = zookeeper_client::TlsIdentity::from_pem(&text(cert), &text(key)).map_err(|e| e.to_string())?;
    zookeeper_client::TlsCerts::builder().with_ca(ca).with_identity(identity).build().map_err(|e| e.to_string())
}

/// A verification error in words an operator acts on.
fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired) | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
            "the certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet)
        | rustls::Error::InvalidCertificate(C::NotValidYetContext { .. }) => "the certificate is not valid yet".into(),
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "the certificate is not signed by this CA".into(),
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            "the certificate does not name this host (add it as a subject alternative name)".into()
        }
        rustls::Error::InvalidCertificate(C::InvalidPurpose)
        | rustls::Error::InvalidCertificate(C::InvalidPurposeContext { .. }) => {
            "the certificate's extended key usage must allow both serverAuth and clientAuth (nodes are both)".into()
        }
        other => other.to_string(),
    }
}

/// The current certificate and CA, for the resolvers and the server
/// verifier.
#[derive(Debug)]
struct Current(Arc<Shared>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().servers.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.signed(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.signed(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

impl StoresServerSessions for Current {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.server_sessions.read().put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.server_sessions.read().get(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.server_sessions.read().take(key)
    }
    fn can_cache(&self) -> bool {
        true
    }
}

impl ClientSessionStore for Current {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.client_sessions.read().set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.client_sessions.read().kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.client_sessions.read().set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.client_sessions.read().tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.client_sessions.read().remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.0.client_sessions.read().insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.0.client_sessions.read().take_tls13_ticket(server_name)
    }
}

/// The listeners' client verifier: always asks (nodes present their
/// certificate); what it demands follows `--tls-client-auth`.
#[derive(Debug)]
struct Clients(Arc<Shared>);

impl ClientCertVerifier for Clients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth == ClientAuth::Require
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client offers the certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.client_auth {
            // Not checked here; `Tls::on_connect` still marks a valid one.
            ClientAuth::None => Ok(ClientCertVerified::assertion()),
            ClientAuth::Request | ClientAuth::Require => {
                self.0.current().clients.verify_client_cert(end_entity, intermediates, now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The client proves it holds the key, whatever the mode.
        self.0.signed(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.signed(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

#[cfg(test)]
mod tests;
