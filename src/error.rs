//! The one error type. Every failure a request can meet is a variant here,
//! and this file alone turns them into HTTP: a status, a stable `code`, the
//! JSON body `{"error", "code"}` and `Retry-After` on 503.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("bad parameter {name}: {reason}")]
    BadParam { name: &'static str, reason: String },
    #[error("value is {size} bytes, limit {max}")]
    ValueTooLarge { size: usize, max: u64 },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("no route {0}")]
    NoRoute(String),
    #[error("method {method} not allowed on {path} (allowed: {allowed})")]
    MethodNotAllowed { method: String, path: String, allowed: &'static str },
    #[error("id {id} is held by live node {url}")]
    IdTaken { id: u64, url: String },
    #[error("this node is not registered in the tree yet")]
    NotRegistered,
    #[error(
        "root full: writing {key} would pass the root's --max-memory of {max} bytes ({bytes} held); nothing was \
         written (deletes, and overwrites that do not grow, still pass)"
    )]
    RootFull { key: String, bytes: u64, max: u64 },
    #[error("this node is not the root; the root is {root}")]
    NotRoot { root: String },
    #[error("message from epoch {got} refused, this node is at epoch {have}")]
    StaleEpoch { got: u64, have: u64 },
    #[error("parent {url} unreachable: {reason}")]
    ParentUnreachable { url: String, reason: String },
    /// The parent answered, with an error that waiting does not cure (a
    /// 401, a 500): the same 503 `parent_unreachable` to the client, but
    /// not held through `--failover-wait`.
    #[error("parent {url} unreachable: {reason}")]
    ParentRefused { url: String, reason: String },
    #[error("{url} answered {status}: {body}")]
    Upstream { url: String, status: u16, body: String },
    #[error("zookeeper {op} {path}: {source}")]
    Zk {
        op: &'static str,
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("{0}")]
    Unauthorized(Credential),
    #[error("this node has {limit} requests in flight upstream (--max-upstream-requests); retry shortly")]
    Overloaded { limit: u32 },
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    #[error("{0}")]
    Internal(String),
    #[error("node {child} is not a child of node {me} (the tree changed; re-registering fixes it)")]
    NotChild { child: u64, me: u64 },
    #[error("{from} is not this node's parent ({parent})")]
    NotParent { from: String, parent: String },
    #[error("this node is shutting down")]
    ShuttingDown,
    #[error("the write of {key:?} was not committed: {reason}")]
    WriteRefused { key: String, reason: String },
    #[error("message from store generation {got} refused: the sender has since reset (generation {have})")]
    StaleGeneration { got: u64, have: u64 },
    #[error("the write of {key:?} is queued but not yet acknowledged; it will still be delivered")]
    WriteInFlight { key: String },
    #[error("{have} root(s) in sync, --min-insync is {need}: ack=root writes wait until a standby catches up")]
    InsyncBelowMin { have: usize, need: usize },
    #[error(
        "committed at version {version}, but a standby left the in-sync set while the write waited: {have} \
         root(s) hold it, --min-insync is {need}; it may be lost if the leader fails"
    )]
    InsyncBelowMinAfter { version: u64, have: usize, need: usize },
    #[error("this root no longer leads: another root took over (the leader znode changed); retry at the new root")]
    Deposed,
    #[error("this root takes no writes now: it was deposed or is handing over to another root; nothing was done")]
    NotLeading,
    #[error("this standby root is not in sync with its leader yet: {0}")]
    NotInSync(String),
    #[error("this node is not a standby root")]
    NotStandby,
    #[error("this standby cannot resume the leader's stream: {0}; it needs a snapshot")]
    CannotResume(String),
    #[error("no leader: {0}")]
    NoInSyncRoot(String),
    #[error("the condition on the write of {key:?} is false ({}): nothing was written", match current {
        Some(v) => format!("its version is {v}"),
        None => "it has no value".to_string(),
    })]
    PreconditionFailed { key: String, current: Option<u64> },
    #[error("key {key:?} belongs to root group {owner}, not to this root's group {mine}{}", match leader {
        Some(url) => format!(" (its leader is {url})"),
        None => String::new(),
    })]
    WrongGroup { key: String, owner: u32, mine: u32, leader: Option<String> },
    #[error("slot {slot} (key {key:?}) is moving to another root group: its writes wait until the move hands it over; retry")]
    SlotMoving { key: String, slot: u16 },
}

/// What a 401 is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Internal routes: `X-Treecache-Secret`.
    ClusterSecret,
    /// `/kv`, `/metrics`, `/dump` under `--api-token`: `Authorization: Bearer`.
    ApiToken,
    /// Internal routes under TLS: a client certificate from `--tls-ca`.
    NodeCertificate,
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::ClusterSecret => {
                "internal route: missing or wrong cluster secret (header X-Treecache-Secret, see --cluster-secret)"
            }
            Credential::ApiToken => "missing or wrong API token (header Authorization: Bearer <token>)",
            Credential::NodeCertificate => {
                "internal route: this connection presented no client certificate from the cluster's CA (--tls-ca)"
            }
        })
    }
}

impl Error {
    /// The stable machine-readable code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadKey(_) => "bad_key",
            Error::BadParam { .. } => "bad_parameter",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::BadRequest(_) => "bad_request",
            Error::NotFound(_) => "not_found",
            Error::NoRoute(_) => "no_route",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::IdTaken { .. } => "id_taken",
            Error::NotRegistered => "not_registered",
            Error::RootFull { .. } => "root_full",
            Error::NotRoot { .. } => "not_root",
            Error::StaleEpoch { .. } => "stale_epoch",
            Error::ParentUnreachable { .. } | Error::ParentRefused { .. } => "parent_unreachable",
            Error::Upstream { .. } => "upstream_error",
            Error::Zk { .. } => "zookeeper",
            Error::Unauthorized(_) => "unauthorized",
            Error::Overloaded { .. } => "overloaded",
            Error::BodyTimeout { .. } => "request_timeout",
            Error::Internal(_) => "internal",
            Error::NotChild { .. } => "not_child",
            Error::NotParent { .. } => "not_parent",
            Error::ShuttingDown => "shutting_down",
            Error::WriteRefused { .. } => "write_refused",
            Error::StaleGeneration { .. } => "stale_generation",
            Error::WriteInFlight { .. } => "write_in_flight",
            Error::InsyncBelowMin { .. } | Error::InsyncBelowMinAfter { .. } => "insync_below_min",
            Error::Deposed | Error::NotLeading => "not_leader",
            Error::NotInSync(_) => "not_in_sync",
            Error::NotStandby => "not_standby",
            Error::CannotResume(_) => "cannot_resume",
            Error::NoInSyncRoot(_) => "no_insync_root",
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::WrongGroup { .. } => "wrong_group",
            Error::SlotMoving { .. } => "slot_moving",
        }
    }

    pub fn zk(op: &'static str, path: impl Into<String>, source: zookeeper_client::Error) -> Self {
        Error::Zk { op, path: path.into(), source }
    }

    pub fn bad_param(name: &'static str, reason: impl Into<String>) -> Self {
        Error::BadParam { name, reason: reason.into() }
    }

    /// The reason is the error and its causes: a TLS failure shows as
    /// what it is (an unknown issuer, an expired certificate), not only as
    /// "error sending request".
    pub fn parent_unreachable(url: &str, err: impl std::error::Error) -> Self {
        let mut reason = err.to_string();
        let mut cause = err.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !reason.contains(&text) {
                reason = format!("{reason}: {text}");
            }
            cause = e.source();
        }
        Error::ParentUnreachable { url: url.to_string(), reason }
    }

    /// ZooKeeper refused an operation on the cluster's znodes for want of
    /// permission: their digest ACL was made from another cluster secret.
    pub fn is_zk_not_authorized(&self) -> bool {
        matches!(self, Error::Zk { source: zookeeper_client::Error::NoAuth, .. })
    }

    /// A key of another root group: ours (`WrongGroup`), or a node's
    /// answer that says so (409 `wrong_group`). Nothing was done.
    pub fn is_wrong_group(&self) -> bool {
        match self {
            Error::WrongGroup { .. } => true,
            Error::Upstream { status: 409, body, .. } => {
                serde_json::from_str::<serde_json::Value>(body).ok().is_some_and(|v| v["code"] == "wrong_group")
            }
            _ => false,
        }
    }

    /// A request passed to the key's owner, whose map is newer than ours
    /// and names another group (just after a slot move's cutover): nothing
    /// was done, and ours is being read again.
    pub fn is_stale_route(&self) -> bool {
        matches!(self, Error::ParentUnreachable { reason, .. } if reason.contains("wrong_group"))
    }

    /// An upstream refusal that only says the tree is changing under this
    /// node (the parent moved, a new root or epoch is taking over): a normal
    /// step of every failover, which the node's new place will resolve.
    pub fn is_tree_changing(&self) -> bool {
        let Error::Upstream { status: 409, body, .. } = self else { return false };
        let code = serde_json::from_str::<serde_json::Value>(body).ok();
        code.as_ref()
            .and_then(|v| v["code"].as_str())
            .is_some_and(|c| matches!(c, "not_parent" | "stale_epoch" | "not_root" | "wrong_group"))
    }

    /// No leader could be reached for now: a failover, a re-election, a
    /// node re-registering under a new root. Nothing was done by the try
    /// that met it (a write not yet queued, a read), so the node may hold
    /// the request and try again (`--failover-wait`).
    pub fn awaits_leader(&self) -> bool {
        matches!(
            self,
            Error::NotRegistered
                | Error::ParentUnreachable { .. }
                | Error::NotLeading
                | Error::NoInSyncRoot(_)
                | Error::NotInSync(_)
                | Error::Zk { .. }
        )
    }

    /// True for the 503 family: the client may retry the same request.
    pub fn is_retryable(&self) -> bool {
        self.status_code() == StatusCode::SERVICE_UNAVAILABLE
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::BadKey(_) | Error::BadParam { .. } | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NotFound(_) | Error::NoRoute(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::IdTaken { .. }
            | Error::NotRoot { .. }
            | Error::StaleEpoch { .. }
            | Error::NotChild { .. }
            | Error::NotParent { .. }
            | Error::StaleGeneration { .. }
            | Error::WriteRefused { .. }
            | Error::NotStandby
            | Error::WrongGroup { .. }
            | Error::CannotResume(_) => StatusCode::CONFLICT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Error::RootFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::NotRegistered
            | Error::ParentUnreachable { .. }
            | Error::ParentRefused { .. }
            | Error::Zk { .. }
            | Error::ShuttingDown
            | Error::WriteInFlight { .. }
            | Error::InsyncBelowMin { .. }
            | Error::InsyncBelowMinAfter { .. }
            | Error::Deposed
            | Error::NotLeading
            | Error::NotInSync(_)
            | Error::NoInSyncRoot(_)
            | Error::SlotMoving { .. }
            | Error::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if self.is_retryable() {
            resp.insert_header((header::RETRY_AFTER, "1"));
        }
        if let Error::MethodNotAllowed { allowed, .. } = self {
            resp.insert_header((header::ALLOW, *allowed));
        }
        if let Error::PreconditionFailed { current: Some(version), .. } = self {
            // The key's live version, as a read's X-Version says it.
            resp.insert_header(("x-version", *version));
        }
        if let Error::Unauthorized(what) = self {
            let challenge = match what {
                Credential::ApiToken => "Bearer realm=\"treecache\"",
                Credential::ClusterSecret => "X-Treecache-Secret realm=\"treecache-internal\"",
                Credential::NodeCertificate => "Mutual-TLS realm=\"treecache-internal\"",
            };
            resp.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        resp.json(serde_json::json!({ "error": self.to_string(), "code": self.code() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn error_is_send_and_sync() {
        assert_send_sync::<Error>();
    }

    #[test]
    fn retryable_errors_carry_retry_after() {
        let err = Error::parent_unreachable("http://10.0.0.1:8080", std::io::Error::other("connection refused"));
        let resp = err.error_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let resp = Error::BadKey("empty".into()).error_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn unauthorized_is_401_with_a_challenge_and_overloaded_is_503() {
        let resp = Error::Unauthorized(Credential::ApiToken).error_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_some_and(|v| v.as_bytes().starts_with(b"Bearer")));
        assert_eq!(Error::Unauthorized(Credential::ClusterSecret).code(), "unauthorized");
        let resp = Error::Overloaded { limit: 4 }.error_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "1");
        assert_eq!(Error::BodyTimeout { secs: 10 }.error_response().status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn a_failed_condition_is_412_with_the_current_version() {
        let resp = Error::PreconditionFailed { key: "k".into(), current: Some(42) }.error_response();
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(resp.headers().get("x-version").unwrap(), "42");
        let resp = Error::PreconditionFailed { key: "k".into(), current: None }.error_response();
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        assert!(resp.headers().get("x-version").is_none());
        assert_eq!(Error::PreconditionFailed { key: "k".into(), current: None }.code(), "precondition_failed");
    }

    #[test]
    fn a_refusal_that_says_the_tree_is_changing_is_told_from_a_real_failure() {
        let upstream = |status: u16, body: &str| Error::Upstream { url: "http://p".into(), status, body: body.into() };
        for code in ["not_parent", "stale_epoch", "not_root"] {
            let body = format!(r#"{{"error":"x","code":"{code}"}}"#);
            assert!(upstream(409, &body).is_tree_changing(), "{code}");
        }
        assert!(!upstream(409, r#"{"error":"x","code":"write_refused"}"#).is_tree_changing());
        assert!(!upstream(500, r#"{"error":"x","code":"not_parent"}"#).is_tree_changing());
        assert!(!upstream(409, "not json").is_tree_changing());
        let refused = || Error::parent_unreachable("http://p", std::io::Error::other("refused"));
        assert!(!refused().is_tree_changing());
        // Held through a failover only when nothing was done and waiting helps.
        assert!(refused().awaits_leader());
        assert!(Error::NotLeading.awaits_leader());
        assert!(!Error::Deposed.awaits_leader(), "a commit may have happened before it");
        assert!(!Error::ParentRefused { url: "http://p".into(), reason: "401".into() }.awaits_leader());
        assert_eq!(Error::ParentRefused { url: "u".into(), reason: "r".into() }.code(), "parent_unreachable");
        assert_eq!(Error::NotLeading.code(), "not_leader");
        let zk = Error::Zk { op: "mkdir", path: "/t".into(), source: zookeeper_client::Error::NoAuth };
        assert!(zk.is_zk_not_authorized());
        let other = Error::Zk { op: "mkdir", path: "/t".into(), source: zookeeper_client::Error::NoNode };
        assert!(!other.is_zk_not_authorized());
        // A root passed a request to an owner whose map is newer than ours.
        let stale = Error::ParentUnreachable { url: "http://p".into(), reason: "409 wrong_group: key".into() };
        assert!(stale.is_stale_route() && stale.awaits_leader());
        assert!(!refused().is_stale_route());
        assert!(!Error::WrongGroup { key: "k".into(), owner: 1, mine: 0, leader: None }.is_stale_route());
    }
}
