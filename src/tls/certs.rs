//! Certificates made on the spot with rcgen: a throwaway CA and the
//! certificates it signs, for `treecache up --tls`, the private ZooKeeper
//! and the tests (which also need expired certificates and ones from
//! another CA). Production certificates come from the operator's own CA
//! (docs/security.md); nothing here reads or keeps a CA across runs.
//!
//! Keys are ECDSA P-256 (rcgen's default), PKCS#8 PEM, which rustls and
//! ZooKeeper's PEM key store both read. Every certificate is fit for both
//! server and client use: a node is both.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::TlsFiles;

/// A CA made here. Its key never leaves memory.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate and its private key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// rcgen's default: from 1975 to 4096.
    Always,
    /// 2020-01-01 to 2021-01-01: expired.
    Expired,
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("cannot make {what}: {e}")
}

impl Authority {
    /// A new CA named `name` (its common name).
    pub fn new(name: &str) -> Result<Authority, String> {
        let key = KeyPair::generate().map_err(err("a CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err("a CA"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(err("a CA certificate"))?;
        Ok(Authority { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA's certificate (for `--tls-ca`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `name` naming `hosts` (DNS names or IP addresses)
    /// as subject alternative names.
    pub fn issue(&self, name: &str, hosts: &[&str]) -> Result<Issued, String> {
        self.issue_with(name, hosts, Validity::Always)
    }

    pub fn issue_with(&self, name: &str, hosts: &[&str], validity: Validity) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(err("a key"))?;
        let sans: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(err("a certificate"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(err("a certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a certificate for `name` and writes `DIR/NAME.pem`,
    /// `DIR/NAME-key.pem` (0600) and `DIR/ca.pem`: the three files of a
    /// node's `--tls-cert`, `--tls-key` and `--tls-ca`.
    pub fn write_node_files(&self, dir: &Path, name: &str, hosts: &[&str]) -> Result<TlsFiles, String> {
        let issued = self.issue(name, hosts)?;
        issued.write(dir, name, self)
    }
}

impl Issued {
    /// Writes `DIR/NAME.pem`, `DIR/NAME-key.pem` (0600) and the CA's
    /// `DIR/ca.pem`.
    pub fn write(&self, dir: &Path, name: &str, ca: &Authority) -> Result<TlsFiles, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let files = TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            ca: dir.join("ca.pem"),
        };
        write_file(&files.cert, &self.cert_pem, 0o644)?;
        write_file(&files.key, &self.key_pem, 0o600)?;
        write_file(&files.ca, ca.cert_pem(), 0o644)?;
        Ok(files)
    }
}

/// Writes `text` to `path` (replacing it) with `mode`.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
