//! The Rust client of `/kv`: [`Client`] reads, writes and deletes keys at
//! one node and turns every answer into a typed result or a typed
//! [`Error`]. The CLI (`treecache get|put|del`), the bench and the tests
//! build their `/kv` requests here and nowhere else.
//!
//! It owns the client side of the public API in docs/design.md: keys
//! percent-encoded in the path, `?consistent=true`, `?ack=`, `?ttl=`, the
//! API token as `Authorization: Bearer`, the headers `X-Version`, `X-Cache`,
//! `X-Node`, `X-Expires-At`, and the error body `{"error","code"}` with
//! `Retry-After` on 503. It must stay a library's client: it names no other
//! part of the crate (the node, the routes and the CLI sit above it).
//!
//! It is thin on the hot path: one URL string per request, the answer's
//! headers moved out of the response, not copied, and parsed only when a
//! caller asks ([`Found::version`], [`Written::version`]); the error body is
//! read only for answers that are not 2xx.
//!
//! ```
//! use treecache::client::{Ack, Client, PutOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), treecache::client::Error> {
//! let url = std::env::var("TREECACHE_URL")
//!     .expect("TREECACHE_URL must name a running node (scripts/doctest.sh starts a tree and sets it)");
//! let client = Client::new(&url)?;
//!
//! // Written once the root has committed it: the answer carries its version.
//! let root = PutOptions { ack: Ack::Root, ..PutOptions::default() };
//! let written = client.put_with("doc/greeting", "hello", root).await?;
//! let version = written.version().expect("an ack=root write answers with its version");
//!
//! // A plain read is served by the node (from memory, or filled from above);
//! // a consistent one is answered by the root, past every cache.
//! let found = client.get("doc/greeting").await?;
//! assert_eq!(found.value(), "hello");
//! println!("version {version} from node {:?} ({:?})", found.node(), found.cache());
//! assert_eq!(client.get_consistent("doc/greeting").await?.version(), Some(version));
//!
//! client.del_with("doc/greeting", Ack::Root).await?;
//! match client.get_consistent("doc/greeting").await {
//!     Err(e) if e.is_not_found() => println!("gone: {e}"),
//!     other => panic!("expected NotFound after the delete, got {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt::{self, Write as _};
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;

/// How long a request may take, connecting included, on the HTTP client
/// [`Builder::build`] makes (a caller's own client keeps its settings).
/// Above a node's `--failover-wait` (10 s by default): a request the node
/// holds through a failover gets the node's answer (a 503 with
/// `Retry-After` at worst), not a timeout that leaves a write's fate open.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

const X_VERSION: &str = "x-version";
const X_CACHE: &str = "x-cache";
const X_NODE: &str = "x-node";
const X_EXPIRES_AT: &str = "x-expires-at";

/// A key as it goes in a `/kv/` path: every byte but ASCII letters and
/// digits percent-encoded (so `/` inside a key stays in the key).
pub fn encode_key(key: &str) -> impl fmt::Display + '_ {
    utf8_percent_encode(key, NON_ALPHANUMERIC)
}

/// The `Authorization` value for an API token (`Bearer T`), marked
/// sensitive so it is never logged; for callers that set it as a default
/// header of their own `reqwest::Client`.
pub fn bearer(token: &str) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// When a write is acknowledged (`?ack=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ack {
    /// Once the node's parent holds it (the default).
    #[default]
    Parent,
    /// Once the root has committed it; the answer carries its version.
    Root,
}

impl Ack {
    pub fn as_str(self) -> &'static str {
        match self {
            Ack::Parent => "parent",
            Ack::Root => "root",
        }
    }
}

/// How a PUT is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub ack: Ack,
    /// Expire the key this long after the write (`?ttl=`): the node keeps
    /// whole seconds, so a fraction is rounded up.
    pub ttl: Option<Duration>,
}

/// Where a read was served from (`X-Cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cache {
    /// The node held the key.
    Hit,
    /// The node filled it from its parent (or read it at the root).
    Miss,
    /// The parent could not be reached and `--stale-if-error` let the
    /// node serve what it held past its freshness.
    Stale,
}

impl Cache {
    pub fn parse(s: &str) -> Option<Cache> {
        match s {
            "hit" => Some(Cache::Hit),
            "miss" => Some(Cache::Miss),
            "stale" => Some(Cache::Stale),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cache::Hit => "hit",
            Cache::Miss => "miss",
            Cache::Stale => "stale",
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header(headers, name).and_then(|v| v.parse().ok())
}

/// A value a node served. The headers are parsed when asked.
#[derive(Debug, Clone)]
pub struct Found {
    value: Bytes,
    headers: HeaderMap,
}

impl Found {
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    pub fn into_value(self) -> Bytes {
        self.value
    }

    /// `X-Version`: the version the root gave the write of this value.
    pub fn version(&self) -> Option<u64> {
        header_u64(&self.headers, X_VERSION)
    }

    /// `X-Cache`: hit, miss or stale.
    pub fn cache(&self) -> Option<Cache> {
        header(&self.headers, X_CACHE).and_then(Cache::parse)
    }

    /// `X-Node`: the id of the node that answered.
    pub fn node(&self) -> Option<u64> {
        header_u64(&self.headers, X_NODE)
    }

    /// `X-Expires-At`: when a key written with a ttl expires, unix milliseconds.
    pub fn expires_at(&self) -> Option<u64> {
        header_u64(&self.headers, X_EXPIRES_AT)
    }

    /// Every header of the answer.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// A node's answer to a write it took (PUT or DELETE).
#[derive(Debug, Clone)]
pub struct Written {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Written {
    /// The version the write got: always with `ack=root`; with
    /// `ack=parent` only when the parent already knew it.
    pub fn version(&self) -> Option<u64> {
        #[derive(serde::Deserialize)]
        struct Answer {
            version: Option<u64>,
        }
        serde_json::from_slice::<Answer>(&self.body).ok().and_then(|a| a.version)
    }

    /// 201 when the write created the key, else 200.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// `X-Node`: the id of the node that answered.
    pub fn node(&self) -> Option<u64> {
        header_u64(&self.headers, X_NODE)
    }

    /// The answer's JSON as sent (`{"version":N}`, `{"ack":"parent",...}`).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// What a node answered to a request it did not carry out: the request,
/// the status, and the error body's `code` and `error` (the whole body as
/// the message when it is not that JSON, e.g. from a proxy).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reply {
    pub method: &'static str,
    /// The URL requested, query included.
    pub url: String,
    pub status: StatusCode,
    pub code: Option<String>,
    pub message: String,
    pub headers: HeaderMap,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}: {}", self.method, self.url, self.status, self.message)
    }
}

/// Everything a call can meet. Node answers carry the [`Reply`]; a request
/// that got no answer carries reqwest's error and the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 404: the root has no such key (a read, or a delete with `ack=root`).
    #[error("{reply}")]
    NotFound { key: String, reply: Box<Reply> },
    /// 400, 405 or 413: the node refused the request as bad input (a bad
    /// key or parameter, a value over `--max-value-bytes`); nothing changed.
    #[error("{0}")]
    Refused(Box<Reply>),
    /// 401: the node runs with `--api-token`, and the request had none or
    /// another one.
    #[error("{0}")]
    Unauthorized(Box<Reply>),
    /// 503: the node cannot serve this now (its parent is unreachable and
    /// it does not hold the key, a failover, too few in-sync roots);
    /// the same request may succeed after `retry_after`.
    #[error("{reply}{}", retry_hint(.retry_after))]
    Unavailable { reply: Box<Reply>, retry_after: Option<Duration> },
    /// Any other answer that is not 2xx (409, 412, 500, 502, 507...).
    #[error("{0}")]
    Server(Box<Reply>),
    /// No answer: the node could not be reached, the request timed out,
    /// or the answer was cut off.
    #[error("{method} {url}: no answer ({})", no_answer(.source))]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API token cannot be sent in a header (it has a control character).
    #[error("the API token is not a valid header value")]
    InvalidToken,
    /// reqwest could not build its HTTP client.
    #[error("cannot build an HTTP client")]
    Build(#[source] reqwest::Error),
}

// Callers hold errors across `.await` and hand them between threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Error>();
    send_sync::<Client>();
};

fn retry_hint(after: &Option<Duration>) -> String {
    after.map_or(String::new(), |d| format!(" (retry after {d:?})"))
}

/// Why a request got no answer, in a word: `timeout`, `connect` (the node
/// could not be reached), `body` (the answer was cut off) or `request`.
pub fn no_answer(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

impl Error {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Refused(_))
    }

    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Unauthorized(_))
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// No answer came (see [`Error::Transport`]): a write may or may not
    /// have happened.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport { .. })
    }

    /// The node's answer, when there was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Error::NotFound { reply, .. } | Error::Unavailable { reply, .. } => Some(reply),
            Error::Refused(reply) | Error::Unauthorized(reply) | Error::Server(reply) => Some(reply),
            Error::Transport { .. } | Error::InvalidToken | Error::Build(_) => None,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        self.reply().map(|r| r.status)
    }

    /// The error body's stable `code` (`bad_key`, `not_found`, ...).
    pub fn code(&self) -> Option<&str> {
        self.reply().and_then(|r| r.code.as_deref())
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The one mapping from a node's error answer to a variant.
    pub(crate) fn from_reply(key: &str, reply: Reply) -> Error {
        let reply = Box::new(reply);
        match reply.status {
            StatusCode::NOT_FOUND => Error::NotFound { key: key.to_string(), reply },
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED | StatusCode::PAYLOAD_TOO_LARGE => {
                Error::Refused(reply)
            }
            StatusCode::UNAUTHORIZED => Error::Unauthorized(reply),
            StatusCode::SERVICE_UNAVAILABLE => {
                let retry_after = header_u64(&reply.headers, RETRY_AFTER.as_str()).map(Duration::from_secs);
                Error::Unavailable { reply, retry_after }
            }
            _ => Error::Server(reply),
        }
    }
}

/// Reads `{"error","code"}` out of an error body.
fn reply(method: &'static str, url: String, status: StatusCode, headers: HeaderMap, body: &[u8]) -> Reply {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: Option<String>,
        code: Option<String>,
    }
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let (message, code) = match parsed {
        Some(ErrorBody { error: Some(message), code }) => (message, code),
        Some(ErrorBody { error: None, code }) => (String::from_utf8_lossy(body).into_owned(), code),
        None => (String::from_utf8_lossy(body).into_owned(), None),
    };
    Reply { method, url, status, code, message, headers }
}

/// Settings for a [`Client`]: `Client::builder(url).api_token(t).build()`.
#[derive(Debug, Clone)]
pub struct Builder {
    url: String,
    api_token: Option<String>,
    timeout: Option<Duration>,
    http: Option<reqwest::Client>,
}

impl Builder {
    /// Sends `Authorization: Bearer TOKEN` (the node's `--api-token`).
    pub fn api_token(mut self, token: impl Into<String>) -> Builder {
        self.api_token = Some(token.into());
        self
    }

    /// How long one request may take, connecting included (default
    /// [`DEFAULT_TIMEOUT`]; with [`Builder::http_client`], that client's own).
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.timeout = Some(timeout);
        self
    }

    /// Sends through this client (its connection pool, TLS and default
    /// headers), so many [`Client`]s can share connections.
    pub fn http_client(mut self, http: reqwest::Client) -> Builder {
        self.http = Some(http);
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let token = self.api_token.as_deref().map(bearer).transpose()?;
        let (http, timeout) = match self.http {
            // Per request, so the caller's client keeps its own otherwise.
            Some(http) => (http, self.timeout),
            None => {
                let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
                (reqwest::Client::builder().timeout(timeout).build().map_err(Error::Build)?, None)
            }
        };
        Ok(Client { http, base: self.url.trim_end_matches('/').to_string(), token, timeout })
    }
}

/// A client of one node's `/kv`. Cloning is cheap and shares connections.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The node's URL without a trailing `/`.
    base: String,
    token: Option<HeaderValue>,
    /// Set per request only on a caller's HTTP client.
    timeout: Option<Duration>,
}

impl Client {
    /// A client of the node at `url` (`http://127.0.0.1:8080`) with the
    /// default settings.
    pub fn new(url: &str) -> Result<Client, Error> {
        Client::builder(url).build()
    }

    pub fn builder(url: &str) -> Builder {
        Builder { url: url.to_string(), api_token: None, timeout: None, http: None }
    }

    /// The node's URL.
    pub fn node_url(&self) -> &str {
        &self.base
    }

    /// `key`'s URL at this node, without a query.
    pub fn url(&self, key: &str) -> String {
        format!("{}/kv/{}", self.base, encode_key(key))
    }

    /// `GET /kv/{key}`: the value as this node serves it.
    pub async fn get(&self, key: &str) -> Result<Found, Error> {
        self.read(key, false).await
    }

    /// `GET /kv/{key}?consistent=true`: the value as the root has it, past
    /// every cache; sees every write acknowledged before it.
    pub async fn get_consistent(&self, key: &str) -> Result<Found, Error> {
        self.read(key, true).await
    }

    /// `PUT /kv/{key}` with `ack=parent`.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<Written, Error> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// `PUT /kv/{key}?ack=..&ttl=..`.
    pub async fn put_with(&self, key: &str, value: impl Into<Bytes>, options: PutOptions) -> Result<Written, Error> {
        let mut url = format!("{}/kv/{}?ack={}", self.base, encode_key(key), options.ack.as_str());
        if let Some(ttl) = options.ttl {
            let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            let _ = write!(url, "&ttl={secs}");
        }
        let request = self.http.put(&url).body(value.into());
        self.write("PUT", key, url, request).await
    }

    /// `DELETE /kv/{key}` with `ack=parent`.
    pub async fn del(&self, key: &str) -> Result<Written, Error> {
        self.del_with(key, Ack::Parent).await
    }

    /// `DELETE /kv/{key}?ack=..`; with [`Ack::Root`], a key the root does
    /// not have is [`Error::NotFound`].
    pub async fn del_with(&self, key: &str, ack: Ack) -> Result<Written, Error> {
        let url = format!("{}/kv/{}?ack={}", self.base, encode_key(key), ack.as_str());
        let request = self.http.delete(&url);
        self.write("DELETE", key, url, request).await
    }

    async fn read(&self, key: &str, consistent: bool) -> Result<Found, Error> {
        let query = if consistent { "?consistent=true" } else { "" };
        let url = format!("{}/kv/{}{query}", self.base, encode_key(key));
        let request = self.http.get(&url);
        let (_, headers, value) = self.send("GET", key, url, request).await?;
        Ok(Found { value, headers })
    }

    async fn write(
        &self,
        method: &'static str,
        key: &str,
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<Written, Error> {
        let (status, headers, body) = self.send(method, key, url, request).await?;
        Ok(Written { status, headers, body })
    }

    /// Sends, reads the whole answer (so the connection is reused), and
    /// returns a 2xx's status, headers and body, or the typed error.
    async fn send(
        &self,
        method: &'static str,
        key: &str,
        url: String,
        mut request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, Bytes), Error> {
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        let mut resp = match request.send().await {
            Ok(resp) => resp,
            Err(source) => return Err(Error::Transport { method, url, source }),
        };
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        let body = match resp.bytes().await {
            Ok(body) => body,
            Err(source) => return Err(Error::Transport { method, url, source }),
        };
        if !status.is_success() {
            return Err(Error::from_reply(key, reply(method, url, status, headers, &body)));
        }
        Ok((status, headers, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn answer(status: u16, headers: &[(&'static str, &'static str)], body: &str) -> Error {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        let status = StatusCode::from_u16(status).unwrap();
        Error::from_reply("a/b", reply("GET", "http://n:1/kv/a%2Fb".into(), status, map, body.as_bytes()))
    }

    fn json(error: &str, code: &str) -> String {
        serde_json::json!({ "error": error, "code": code }).to_string()
    }

    #[test]
    fn statuses_and_bodies_map_to_variants_with_code_and_message() {
        let e = answer(404, &[], &json("key \"a/b\" not found", "not_found"));
        assert!(e.is_not_found());
        assert!(matches!(&e, Error::NotFound { key, .. } if key == "a/b"));
        assert_eq!(e.to_string(), "GET http://n:1/kv/a%2Fb: 404 Not Found: key \"a/b\" not found");
        for (status, code) in [(400, "bad_key"), (405, "method_not_allowed"), (413, "value_too_large")] {
            let e = answer(status, &[], &json("no", code));
            assert!(e.is_refused(), "{status}");
            assert_eq!((e.status().map(|s| s.as_u16()), e.code()), (Some(status), Some(code)));
        }
        let e = answer(401, &[], &json("missing or wrong API token", "unauthorized"));
        assert!(e.is_unauthorized());
        assert_eq!(e.reply().map(|r| r.message.as_str()), Some("missing or wrong API token"));
        let e = answer(409, &[], &json("the write was not committed", "write_refused"));
        assert!(matches!(e, Error::Server(_)));
        assert_eq!(e.code(), Some("write_refused"));
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let e = answer(503, &[("retry-after", "1")], &json("parent unreachable", "parent_unreachable"));
        assert!(e.is_unavailable());
        assert_eq!((e.retry_after(), e.code()), (Some(Duration::from_secs(1)), Some("parent_unreachable")));
        assert!(e.to_string().ends_with("parent unreachable (retry after 1s)"), "{e}");
        let e = answer(503, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], "{}");
        assert_eq!(e.retry_after(), None, "an HTTP date is not taken for seconds");
    }

    #[test]
    fn a_body_that_is_not_the_error_json_is_the_message() {
        let e = answer(502, &[], "<html>bad gateway</html>");
        assert_eq!((e.code(), e.reply().map(|r| r.message.as_str())), (None, Some("<html>bad gateway</html>")));
        assert!(matches!(e, Error::Server(_)));
    }

    #[test]
    fn keys_are_percent_encoded_and_ttls_round_up_to_seconds() {
        let c = Client::new("http://n:1/").unwrap();
        assert_eq!(c.url("a/b c"), "http://n:1/kv/a%2Fb%20c");
        assert_eq!(c.node_url(), "http://n:1");
        assert!(matches!(bearer("bad\ntoken"), Err(Error::InvalidToken)));
        assert!(bearer("t").unwrap().is_sensitive());
    }

    /// A server that answers one request with `answer` and hands back
    /// what it received.
    async fn fake_server(answer: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then as many bytes as its content-length says.
            let mut want = usize::MAX;
            while received.len() < want {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&received).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text.lines().find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok());
                    want = end + 4 + length.unwrap_or(0);
                }
            }
            conn.write_all(answer.as_bytes()).await.unwrap();
            conn.shutdown().await.unwrap();
            String::from_utf8_lossy(&received).into_owned()
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_503_from_a_server_is_unavailable_with_its_code_and_retry_after() {
        let body = r#"{"error":"parent http://p:1 unreachable: timeout","code":"parent_unreachable"}"#;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let (url, server) = fake_server(answer).await;
        let client = Client::builder(&url).api_token("t0k").build().unwrap();
        let err = client.get_consistent("a/b").await.unwrap_err();
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /kv/a%2Fb?consistent=true HTTP/1.1\r\n"), "{request}");
        assert!(request.to_lowercase().contains("authorization: bearer t0k\r\n"), "{request}");
        assert!(err.is_unavailable(), "{err:?}");
        assert_eq!((err.code(), err.retry_after()), (Some("parent_unreachable"), Some(Duration::from_secs(2))));
        assert!(err.to_string().starts_with(&format!("GET {url}/kv/a%2Fb?consistent=true: 503")), "{err}");
    }

    #[tokio::test]
    async fn a_write_answer_gives_its_version_and_node() {
        let answer = "HTTP/1.1 201 Created\r\nx-node: 4\r\ncontent-type: application/json\r\n\
                      content-length: 14\r\nconnection: close\r\n\r\n{\"version\":17}";
        let (url, server) = fake_server(answer.to_string()).await;
        let client = Client::new(&url).unwrap();
        let options = PutOptions { ack: Ack::Root, ttl: Some(Duration::from_millis(1500)) };
        let written = client.put_with("k", "v", options).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("PUT /kv/k?ack=root&ttl=2 HTTP/1.1\r\n"), "{request}");
        assert_eq!((written.status(), written.version(), written.node()), (StatusCode::CREATED, Some(17), Some(4)));
    }

    #[tokio::test]
    async fn no_answer_is_a_transport_error_naming_the_url() {
        let url = "http://127.0.0.1:9";
        let err = Client::new(url).unwrap().del_with("k", Ack::Root).await.unwrap_err();
        assert!(err.is_transport(), "{err:?}");
        assert_eq!(err.to_string(), format!("DELETE {url}/kv/k?ack=root: no answer (connect)"));
        assert!(std::error::Error::source(&err).is_some());
    }
}
