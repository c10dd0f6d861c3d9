//! Request ids and log lines.
//!
//! Every request a node serves runs inside [`scope`] with its
//! [`RequestId`]: the one the client sent in `X-Request-Id` when it is sane
//! (1–64 of `A-Za-z0-9._:-`), else none until something needs one. Code
//! running for the request reads it with [`current`], which makes a new
//! 16-hex-digit id the first time it is asked: the node's outgoing requests
//! carry it (one helper in `node/mod.rs`), and every log line written
//! inside the scope shows it. A hit that neither logs nor goes upstream
//! makes no id at all (the hot path pays nothing for ids); [`stamp`] puts
//! the id on the answer whenever there is one. Work that outlives the
//! request (push queues, the write uplink, whose batches mix many
//! clients' writes) runs outside any scope and logs without one.
//!
//! [`init_logging`] installs env_logger (`RUST_LOG` as before) writing text
//! or one JSON object per line (`--log-format`).

use std::cell::OnceCell;
use std::io::Write;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::task::futures::TaskLocalFuture;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2025-01-01T00:00:00Z INFO target [request id] message`.
    Text,
    /// One JSON object per line: ts, level, target, msg, request_id (when known).
    Json,
}

/// The log filter a node uses unless `RUST_LOG` says otherwise: its own
/// INFO lines, only warnings from ZooKeeper's client and actix's server.
pub const DEFAULT_LOG_FILTER: &str = "info,zookeeper_client=warn,actix_server=warn";

/// The header carrying a request's id, in and out.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-given id kept; longer ones are replaced.
const MAX_ID_LEN: usize = 64;

/// The id of the request being served: the client's, or one made when
/// first needed.
#[derive(Debug, Default)]
pub struct RequestId {
    given: Option<HeaderValue>,
    made: OnceCell<String>,
}

impl RequestId {
    /// From the request's `X-Request-Id`: kept when sane (safe to log and
    /// forward), else ignored.
    pub fn from_header(given: Option<&HeaderValue>) -> RequestId {
        RequestId { given: given.filter(|v| is_sane(v.as_bytes())).cloned(), made: OnceCell::new() }
    }

    /// The id, made now if there was none.
    fn get(&self) -> &str {
        match self.given.as_ref().and_then(|v| v.to_str().ok()) {
            Some(id) => id,
            None => self.made.get_or_init(new_id),
        }
    }

    /// The id to answer with, if the client gave one or one was made.
    fn answer(&self) -> Option<HeaderValue> {
        match (&self.given, self.made.get()) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(made)) => HeaderValue::from_str(made).ok(),
            (None, None) => None,
        }
    }
}

tokio::task_local! {
    static REQUEST_ID: RequestId;
}

/// Runs `fut` as the work of request `id`.
pub fn scope<F: std::future::Future>(id: RequestId, fut: F) -> TaskLocalFuture<RequestId, F> {
    REQUEST_ID.scope(id, fut)
}

/// The id of the request being served here, if any (made now if the
/// request had none yet).
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.get().to_string()).ok()
}

/// Sets `X-Request-Id` on an answer, when the request in scope has an id.
pub fn stamp(headers: &mut HeaderMap) {
    if let Ok(Some(v)) = REQUEST_ID.try_with(RequestId::answer) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
}

fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new id: 64 random bits as 16 hex digits.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Installs the logger. `RUST_LOG` picks levels (default: info, quieter
/// for the ZooKeeper client and actix's server). Call once, first thing.
pub fn init_logging(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER));
    match format {
        LogFormat::Text => builder.format(|buf, record| {
            let ts = buf.timestamp_millis();
            match current() {
                Some(id) => writeln!(buf, "[{ts} {} {} req={id}] {}", record.level(), record.target(), record.args()),
                None => writeln!(buf, "[{ts} {} {}] {}", record.level(), record.target(), record.args()),
            }
        }),
        LogFormat::Json => builder.format(|buf, record| {
            let line = json_line(
                &buf.timestamp_millis().to_string(),
                record.level().as_str(),
                record.target(),
                &record.args().to_string(),
                current().as_deref(),
            );
            writeln!(buf, "{line}")
        }),
    };
    builder.init();
}

/// One JSON log line: ts, level, target, msg, and request_id when known.
pub fn json_line(ts: &str, level: &str, target: &str, msg: &str, request_id: Option<&str>) -> String {
    let mut obj = serde_json::json!({ "ts": ts, "level": level, "target": target, "msg": msg });
    if let Some(id) = request_id {
        obj["request_id"] = serde_json::Value::from(id);
    }
    obj.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id `current` sees and the header `stamp` sets, for a request
    /// whose client sent `given`, after `work` ran inside its scope.
    async fn served(given: Option<&[u8]>, work: fn() -> Option<String>) -> (Option<String>, Option<String>) {
        let given = given.and_then(|g| HeaderValue::from_bytes(g).ok());
        scope(RequestId::from_header(given.as_ref()), async move {
            let seen = work();
            let mut headers = HeaderMap::new();
            stamp(&mut headers);
            (seen, headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string))
        })
        .await
    }

    #[tokio::test]
    async fn client_ids_are_kept_when_sane_and_replaced_otherwise() {
        let kept = served(Some(b"abc-123_x.y:z"), || None).await;
        assert_eq!(kept, (None, Some("abc-123_x.y:z".into())), "answered even when nothing asked for it");
        assert_eq!(served(Some(b"abc"), current).await, (Some("abc".into()), Some("abc".into())));
        for bad in [&b""[..], b"has space", b"{\"json\"}", &[b'a'; 65]] {
            let (seen, answered) = served(Some(bad), current).await;
            let seen = seen.expect("a made id");
            assert_eq!(seen.len(), 16, "{bad:?} replaced by a fresh id");
            assert!(seen.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(answered, Some(seen), "the made id is the one answered");
        }
    }

    #[tokio::test]
    async fn an_id_is_made_only_when_something_needs_it_and_stays_the_same() {
        assert_eq!(served(None, || None).await, (None, None), "a request nothing asked an id of gets none");
        let (seen, answered) = served(None, || {
            let first = current();
            assert_eq!(current(), first, "one id per request");
            first
        })
        .await;
        assert!(seen.is_some());
        assert_eq!(seen, answered);
        assert_ne!(served(None, current).await.0, served(None, current).await.0);
    }

    #[tokio::test]
    async fn the_id_is_visible_inside_the_scope_only() {
        assert_eq!(current(), None);
        let given = HeaderValue::from_static("r1");
        let inside = scope(RequestId::from_header(Some(&given)), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("r1"));
        assert_eq!(current(), None);
        let mut headers = HeaderMap::new();
        stamp(&mut headers);
        assert!(headers.is_empty(), "no id outside a request");
    }

    #[test]
    fn json_lines_are_one_object_with_the_request_id_when_known() {
        let line = json_line("2025-01-01T00:00:00.000Z", "INFO", "treecache::node", "say \"hi\"\nthere", Some("ab"));
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "say \"hi\"\nthere");
        assert_eq!(v["request_id"], "ab");
        assert_eq!(v["level"], "INFO");
        let v: serde_json::Value = serde_json::from_str(&json_line("t", "WARN", "x", "m", None)).unwrap();
        assert!(v.get("request_id").is_none());
    }
}
