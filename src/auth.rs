//! Who may call what. Owns the two credentials and how a request presents
//! them; the HTTP layer asks here once per request (a middleware on the
//! internal scope, another on `/kv`, `/metrics`, `/dump`), never in a
//! handler. The ZooKeeper side of the secret (digest ACL, session auth)
//! is in [`crate::tree::zk`].
//!
//! - The cluster secret (`--cluster-secret`) travels in `X-Treecache-Secret`
//!   on every node-to-node request: the node's HTTP client sends it as a
//!   default header. A header of its own, not `Authorization`, so the two
//!   credentials never stand in for each other: a client's API token opens
//!   no internal route, the secret no `/kv`.
//! - The API token (`--api-token`, off by default) guards `/kv`, `/metrics`
//!   and `/dump` as `Authorization: Bearer <token>`.
//! - Under TLS, internal routes also need a node's certificate: the
//!   connection's client presented one that chains to `--tls-ca`
//!   ([`crate::tls::PeerVerified`], set when the connection opened).

use actix_web::http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use subtle::ConstantTimeEq;

use crate::error::{Credential, Error, Result};

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The cluster secret: printable ASCII (it travels in an HTTP header),
/// at least [`MIN_SECRET_LEN`] characters. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Result<Secret, String> {
        if text.is_empty() {
            return Err("the cluster secret is empty".into());
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the cluster secret must be printable ASCII without spaces".into());
        }
        if text.len() < MIN_SECRET_LEN {
            return Err(format!("the cluster secret is {} characters; use at least {MIN_SECRET_LEN}", text.len()));
        }
        Ok(Secret(text))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The header carrying the cluster secret on internal requests.
pub const SECRET_HEADER_NAME: &str = "x-treecache-secret";
pub const SECRET_HEADER: HeaderName = HeaderName::from_static(SECRET_HEADER_NAME);

/// Equal, in time that depends only on the lengths: a wrong guess learns
/// nothing of how many leading bytes it got right. `subtle` (the RustCrypto
/// crate) rather than a hand-written loop, whose constant time an optimizer
/// is free to undo. The length itself is not secret.
pub fn ct_eq(presented: &[u8], expected: &[u8]) -> bool {
    presented.ct_eq(expected).into()
}

/// The credentials a node checks.
#[derive(Debug, Clone)]
pub struct Guard {
    secret: Secret,
    token: Option<String>,
    /// Internal routes need a verified client certificate (TLS is on).
    node_certificates: bool,
}

impl Guard {
    pub fn new(secret: Secret, token: Option<String>) -> Guard {
        Guard { secret, token, node_certificates: false }
    }

    /// Internal routes also need a client certificate from `--tls-ca`.
    pub fn with_node_certificates(mut self) -> Guard {
        self.node_certificates = true;
        self
    }

    /// An internal route under TLS: the connection's client presented a
    /// certificate that chains to `--tls-ca` (`verified`), or 401.
    pub fn check_node_certificate(&self, verified: bool) -> Result<()> {
        if self.node_certificates && !verified {
            return Err(Error::Unauthorized(Credential::NodeCertificate));
        }
        Ok(())
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// An internal route: the cluster secret, or 401.
    pub fn check_secret(&self, headers: &HeaderMap) -> Result<()> {
        match headers.get(SECRET_HEADER) {
            Some(v) if ct_eq(v.as_bytes(), self.secret.expose().as_bytes()) => Ok(()),
            _ => Err(Error::Unauthorized(Credential::ClusterSecret)),
        }
    }

    /// `/kv`, `/metrics`, `/dump`: the API token when one is set, or 401.
    pub fn check_token(&self, headers: &HeaderMap) -> Result<()> {
        let presented =
            headers.get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).map(|t| t.trim_ascii());
        match presented {
            _ if !self.needs_token() => Ok(()),
            Some(t) if self.token_matches(t) => Ok(()),
            _ => Err(Error::Unauthorized(Credential::ApiToken)),
        }
    }

    /// Whether clients must present the API token (`--api-token` is set).
    pub fn needs_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `presented` is the API token (RESP's AUTH), in constant
    /// time; false when none is set.
    pub fn token_matches(&self, presented: &[u8]) -> bool {
        self.token.as_ref().is_some_and(|token| ct_eq(presented, token.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn guard(token: Option<&str>) -> Guard {
        Guard::new(Secret::new("s".repeat(20)).unwrap(), token.map(String::from))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(HeaderName::from_static(n), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_secret_must_match_exactly() {
        let g = guard(None);
        assert!(g.check_secret(&headers(&[("x-treecache-secret", &"s".repeat(20))])).is_ok());
        assert!(g.check_secret(&headers(&[("x-treecache-secret", &"s".repeat(19))])).is_err());
        assert!(g.check_secret(&headers(&[("x-treecache-secret", &"s".repeat(21))])).is_err());
        assert!(g.check_secret(&headers(&[("x-treecache-secret", "")])).is_err());
        assert!(g.check_secret(&headers(&[])).is_err());
        let bearer = format!("Bearer {}", "s".repeat(20));
        assert!(g.check_secret(&headers(&[("authorization", &bearer)])).is_err(), "the token header is not the secret");
    }

    #[test]
    fn the_token_is_checked_only_when_set() {
        assert!(guard(None).check_token(&headers(&[])).is_ok());
        let g = guard(Some("t0k"));
        assert!(g.check_token(&headers(&[("authorization", "Bearer t0k")])).is_ok());
        assert!(g.check_token(&headers(&[("authorization", "Bearer t0")])).is_err());
        assert!(g.check_token(&headers(&[("authorization", "Basic t0k")])).is_err());
        assert!(g.check_token(&headers(&[("authorization", "t0k")])).is_err());
        assert!(g.check_token(&headers(&[])).is_err());
    }

    #[test]
    fn a_node_certificate_is_needed_only_under_tls() {
        assert!(guard(None).check_node_certificate(false).is_ok());
        let g = guard(None).with_node_certificates();
        assert!(g.check_node_certificate(true).is_ok());
        assert_eq!(g.check_node_certificate(false).unwrap_err().code(), "unauthorized");
    }

    #[test]
    fn ct_eq_compares_bytes() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
