//! Request ids and log lines.
//!
//! Every request a node serves runs inside [`scope`] with its id: the one
//! the client sent in `X-Request-Id` when it is sane (1–64 of
//! `A-Za-z0-9._:-`), else a new 16-hex-digit one. Code running for the
//! request reads it with [`current`]: the node's outgoing requests carry it
//! (one helper in `node/mod.rs`), and every log line written inside the
//! scope shows it. Work that outlives the request (push queues, the write
//! uplink, whose batches mix many clients' writes) runs outside any scope
//! and logs without one.
//!
//! [`init_logging`] installs env_logger (`RUST_LOG` as before) writing text
//! or one JSON object per line (`--log-format`).

use std::io::Write;

use actix_web::http::header::HeaderName;

use crate::config::LogFormat;

/// The header carrying a request's id, in and out.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-given id kept; longer ones are replaced.
const MAX_ID_LEN: usize = 64;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `fut` as the work of request `id`.
pub async fn scope<F: std::future::Future>(id: String, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// The id of the request being served here, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(String::clone).ok()
}

/// The client's id when it is safe to log and forward, else a new one.
pub fn id_from(given: Option<&[u8]>) -> String {
    match given {
        Some(v) if is_sane(v) => String::from_utf8_lossy(v).into_owned(),
        _ => new_id(),
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
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,zookeeper_client=warn,actix_server=warn"),
    );
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

    #[test]
    fn client_ids_are_kept_when_sane_and_replaced_otherwise() {
        assert_eq!(id_from(Some(b"abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in [&b""[..], b"has space", b"line\nbreak", b"{\"json\"}", &[b'a'; 65]] {
            let id = id_from(Some(bad));
            assert_eq!(id.len(), 16, "{bad:?} replaced by a fresh id");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(id_from(None), id_from(None));
    }

    #[tokio::test]
    async fn the_id_is_visible_inside_the_scope_only() {
        assert_eq!(current(), None);
        let inside = scope("r1".into(), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("r1"));
        assert_eq!(current(), None);
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
