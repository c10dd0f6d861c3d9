//! HTTP: one [`routes`] function wires every route. Handlers parse and
//! check input, call the node, and shape the answer; status codes and error
//! bodies come from [`crate::error`] only.
//!
//! - [`kv`]: `GET/PUT/POST/DELETE /kv/{key}`.
//! - [`admin`]: `/health`, `/tree`, `/metrics`, `/dump`.
//! - [`internal`]: registration and the node-to-node routes (fills,
//!   forwarded writes, pushes, topology, clear, leave, invalidate, dropped).
//! - [`guard`]: middleware: request ids, request latency and the access
//!   log around everything, the cluster secret around every internal
//!   route, the API token around `/kv`, `/metrics`, `/dump`.

mod admin;
pub mod guard;
mod internal;
mod kv;

use actix_web::http::header::HeaderName;
use actix_web::middleware::{from_fn, Condition};
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use percent_encoding::percent_decode_str;

use crate::error::{Error, Result};
use crate::metrics::ROUTE_LABELS;
use crate::store::check_key;

/// One route: its path as `docs/openapi.yaml` writes it, the methods it
/// answers (what `Allow` says on a 405), whether it is node-to-node only,
/// and which handler serves it. [`ROUTES`] is the one list: [`routes`]
/// registers exactly these, and the test that keeps the OpenAPI document
/// true reads them.
#[derive(Debug)]
pub struct Route {
    pub path: &'static str,
    /// Comma-separated, as in an `Allow` header.
    pub methods: &'static str,
    /// Registration and the node-to-node routes (`x-internal` in the spec).
    pub internal: bool,
    handler: Handler,
}

impl Route {
    pub fn methods(&self) -> impl Iterator<Item = &'static str> {
        self.methods.split(", ")
    }

    /// Whether a request for `path` goes to this route (a keyed route
    /// takes every path under its prefix, as [`register`] wires it).
    fn matches(&self, path: &str) -> bool {
        match self.path.strip_suffix("{key}") {
            Some(prefix) => path.starts_with(prefix) || Some(path) == prefix.strip_suffix('/'),
            None => path == self.path,
        }
    }

    /// Needs the cluster secret: every internal route.
    pub fn needs_secret(&self) -> bool {
        self.internal
    }

    /// Needs the API token when one is set: `/kv`, `/metrics`, `/dump`.
    pub fn needs_token(&self) -> bool {
        matches!(self.handler, Handler::Kv | Handler::Metrics | Handler::Dump)
    }
}

/// Which handler serves a [`Route`]: the one `match` in [`register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    Kv,
    Health,
    Tree,
    Metrics,
    Dump,
    Register,
    Fill,
    Write,
    Push,
    Topology,
    Clear,
    Invalidate,
    Dropped,
    Leave,
    Standby,
    Replicate,
    Import,
}

const KV_WRITE_LABEL: usize = 1;
const KV_DELETE_LABEL: usize = 2;
const OTHER_LABEL: usize = 23;
const _: () = assert!(OTHER_LABEL == ROUTE_LABELS.len() - 1, "other is the last label");

impl Handler {
    /// Its index in [`ROUTE_LABELS`] (for `/kv`: a read's).
    const fn label(self) -> usize {
        match self {
            Handler::Kv => 0,
            Handler::Health => 3,
            Handler::Tree => 4,
            Handler::Metrics => 5,
            Handler::Dump => 6,
            Handler::Register => 7,
            Handler::Fill => 8,
            Handler::Write => 9,
            Handler::Push => 10,
            Handler::Topology => 11,
            Handler::Clear => 12,
            Handler::Invalidate => 13,
            Handler::Dropped => 14,
            Handler::Leave => 15,
            Handler::Standby => 16,
            Handler::Replicate => 17,
            Handler::Import => 18,
        }
    }
}

/// The `route` label of a request, as an index into [`ROUTE_LABELS`]: a
/// few string comparisons against [`ROUTES`], `/kv` first.
pub fn route_label(method: &actix_web::http::Method, path: &str) -> usize {
    use actix_web::http::Method;
    let Some(route) = ROUTES.iter().find(|r| r.matches(path)) else { return OTHER_LABEL };
    match (route.handler, method) {
        (Handler::Kv, &Method::GET | &Method::HEAD) => Handler::Kv.label(),
        (Handler::Kv, &Method::PUT | &Method::POST) => KV_WRITE_LABEL,
        (Handler::Kv, &Method::DELETE) => KV_DELETE_LABEL,
        (Handler::Kv, _) => OTHER_LABEL,
        (handler, _) => handler.label(),
    }
}

const fn route(path: &'static str, methods: &'static str, internal: bool, handler: Handler) -> Route {
    Route { path, methods, internal, handler }
}

pub const KV: Route = route("/kv/{key}", "GET, HEAD, PUT, POST, DELETE", false, Handler::Kv);
pub const FILL: Route = route("/internal/fill/{key}", "GET", true, Handler::Fill);

/// Every route a node serves.
pub const ROUTES: &[Route] = &[
    KV,
    route("/health", "GET", false, Handler::Health),
    route("/tree", "GET", false, Handler::Tree),
    route("/metrics", "GET", false, Handler::Metrics),
    route("/dump", "GET", false, Handler::Dump),
    route("/clients/register", "POST", true, Handler::Register),
    FILL,
    route("/internal/write", "POST", true, Handler::Write),
    route("/internal/push", "POST", true, Handler::Push),
    route("/internal/topology", "POST", true, Handler::Topology),
    route("/internal/clear", "POST", true, Handler::Clear),
    route("/internal/invalidate", "POST", true, Handler::Invalidate),
    route("/internal/dropped", "POST", true, Handler::Dropped),
    route("/internal/leave", "POST", true, Handler::Leave),
    route("/internal/standby", "POST", true, Handler::Standby),
    route("/internal/replicate", "POST", true, Handler::Replicate),
    route("/internal/import", "POST", true, Handler::Import),
];

/// Registers every route of [`ROUTES`]. `max_value` is `--max-value-bytes`.
pub fn routes(cfg: &mut web::ServiceConfig, max_value: usize) {
    cfg.app_data(MaxValue(max_value));
    for route in ROUTES {
        register(cfg, route);
    }
    cfg.default_service(web::to(not_found));
}

fn register(cfg: &mut web::ServiceConfig, route: &'static Route) {
    // The two keyed routes are prefix scopes, not `/kv/{key:.*}` patterns:
    // a pattern is a regex run on every request (a profile of the miss
    // path showed ~4% of a node's CPU in regex_lite), a prefix is a
    // string comparison. The key is the rest of the raw path either way,
    // and each of the two handlers checks the method itself.
    let prefix = route.path.trim_end_matches("/{key}");
    let wrong_method = move |req: HttpRequest| async move { method_not_allowed(&req, route) };
    let resource = |to| web::resource(route.path).route(to).default_service(web::to(wrong_method));
    // Access comes from the table, the same for every route: the cluster
    // secret for internal ones, the API token for /kv, /metrics, /dump.
    // Checked before the handler (or the 405) runs; no handler checks it.
    let secret = || Condition::new(route.needs_secret(), from_fn(guard::require_secret));
    let token = || Condition::new(route.needs_token(), from_fn(guard::require_token));
    macro_rules! guarded {
        ($service:expr) => {
            cfg.service($service.wrap(secret()).wrap(token()))
        };
    }
    match route.handler {
        Handler::Kv => guarded!(web::scope(prefix).default_service(web::to(kv::route))),
        Handler::Fill => guarded!(web::scope(prefix).default_service(web::to(internal::fill))),
        Handler::Health => guarded!(resource(web::get().to(admin::health))),
        Handler::Tree => guarded!(resource(web::get().to(admin::tree))),
        Handler::Metrics => guarded!(resource(web::get().to(admin::metrics))),
        Handler::Dump => guarded!(resource(web::get().to(admin::dump))),
        Handler::Register => guarded!(resource(web::post().to(internal::register))),
        Handler::Write => guarded!(resource(web::post().to(internal::write))),
        Handler::Push => guarded!(resource(web::post().to(internal::push))),
        Handler::Topology => guarded!(resource(web::post().to(internal::topology))),
        Handler::Clear => guarded!(resource(web::post().to(internal::clear))),
        Handler::Invalidate => guarded!(resource(web::post().to(internal::invalidate))),
        Handler::Dropped => guarded!(resource(web::post().to(internal::dropped))),
        Handler::Leave => guarded!(resource(web::post().to(internal::leave))),
        Handler::Standby => guarded!(resource(web::post().to(internal::standby))),
        Handler::Replicate => guarded!(resource(web::post().to(internal::replicate))),
        Handler::Import => guarded!(resource(web::post().to(internal::import))),
    };
}

/// The JSON 405 with `Allow` for a method `route` does not answer.
fn method_not_allowed(req: &HttpRequest, route: &'static Route) -> Result<actix_web::HttpResponse> {
    Err(Error::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_string(),
        allowed: route.methods,
    })
}

/// Response headers DESIGN.md names, shared by the public and internal routes.
const X_NODE: HeaderName = HeaderName::from_static("x-node");
const X_VERSION: HeaderName = HeaderName::from_static("x-version");
const X_EXPIRES_AT: HeaderName = HeaderName::from_static("x-expires-at");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

#[derive(Clone, Copy)]
struct MaxValue(usize);

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse> {
    Err(Error::NoRoute(format!("{} {}", req.method(), req.path())))
}

/// The key after `prefix` in the raw request path, percent-decoded and
/// checked (1–250 bytes of UTF-8, no control characters).
fn key_from(req: &HttpRequest, prefix: &str) -> Result<String> {
    let raw = req.uri().path().strip_prefix(prefix).unwrap_or("");
    let key = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Error::BadKey("not valid UTF-8 after percent-decoding".into()))?
        .into_owned();
    check_key(&key).map_err(Error::BadKey)?;
    Ok(key)
}

/// Query parameters, refusing any not in `allowed`.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(req: &HttpRequest, allowed: &[&str]) -> Result<Query> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map_err(|e| Error::BadRequest(format!("bad query string: {e}")))?
            .into_inner();
        if let Some((name, _)) = pairs.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            return Err(Error::BadRequest(format!("unknown parameter {name:?} (allowed: {})", allowed.join(", "))));
        }
        Ok(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn bool(&self, name: &'static str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| match v {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                other => Err(Error::bad_param(name, format!("{other:?} is not true or false"))),
            })
            .transpose()
    }

    fn u64(&self, name: &'static str) -> Result<Option<u64>> {
        self.get(name)
            .map(|v| v.parse::<u64>().map_err(|_| Error::bad_param(name, format!("{v:?} is not a whole number"))))
            .transpose()
    }
}

/// How long a request body may take to arrive, once its head has: a client
/// trickling a body holds a handler no longer than this.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a body of at most `limit` bytes within [`BODY_TIMEOUT`]. One chunk
/// (the usual case for a small value) is passed on as is, without a copy.
async fn read_body(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<Bytes> {
    tokio::time::timeout(BODY_TIMEOUT, read_body_untimed(req, payload, limit))
        .await
        .unwrap_or(Err(Error::BodyTimeout { secs: BODY_TIMEOUT.as_secs() }))
}

async fn read_body_untimed(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Bytes> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|&s| s > limit) {
        return Err(Error::ValueTooLarge { size, max: limit as u64 });
    }
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::BadRequest(format!("reading the body: {e}")))?;
        let size = buf.len() + first.as_ref().map_or(0, Bytes::len) + chunk.len();
        if size > limit {
            return Err(Error::ValueTooLarge { size, max: limit as u64 });
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
            None => buf.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// The sender's epoch from an internal request, if it said.
fn epoch_of(req: &HttpRequest) -> Result<Option<u64>> {
    req.headers()
        .get(crate::node::EPOCH_HEADER)
        .map(|v| {
            v.to_str().ok().and_then(|s| s.parse().ok()).ok_or_else(|| Error::bad_param("epoch", "not a whole number"))
        })
        .transpose()
}

#[cfg(test)]
mod tests;
